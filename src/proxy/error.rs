//! The one place where a failure becomes an HTTP response (and a log line): a text answer with
//! the failure's status, or for a gRPC call, a trailers-only answer with its gRPC status (HTTP
//! 200, as gRPC clients expect, and as Envoy answers).

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use super::grpc;
use super::response::ResponseBody;

/// The `Retry-After` of a 503 for a member at its connection limit, in seconds: soon, since
/// its queue moves at the pace of its answers.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why the proxy answered instead of a member.
#[derive(Debug)]
pub enum ProxyError {
    /// No cluster serves this host and path.
    NoRoute { host: String, path: String },
    /// An HTTPS request for a host of another listener than its connection's server name
    /// selected (a connection reused for another host): the client must ask on a new one.
    Misdirected { server_name: String, host: String },
    /// The route's backend cannot be served (unknown, not permitted, or no weight).
    NoBackend { rule: String },
    /// The cluster has no usable member.
    NoMember { cluster: String },
    /// The member could not be reached or broke the exchange.
    MemberFailed {
        cluster: String,
        member: String,
        cause: String,
    },
    /// The member's connection limit is reached, and its queue is full or the request waited
    /// too long (`memberLimits`).
    Overloaded {
        cluster: String,
        member: String,
        cause: String,
    },
    /// The member did not answer in time.
    Timeout {
        cluster: String,
        member: String,
        after: Duration,
    },
    /// The route's limit on the whole request ran out.
    RequestTimeout { after: Duration },
    /// CONNECT: this is not a forward proxy.
    ConnectRefused,
    /// More request headers than allowed.
    TooManyHeaders { count: usize, limit: usize },
    /// The client's request body broke off or was malformed on its way to the member.
    ClientBody { cause: String },
    /// The client sent nothing of its request body for the body read timeout.
    ClientTimeout { cause: String },
    /// More than one Host field.
    DuplicateHost,
    /// No usable host to build a redirect's Location from.
    NoHost,
    /// A CORS preflight the route's filter answers.
    Preflight(Box<http::HeaderMap>),
    /// A redirect: to HTTPS (`httpsRedirect`), or a route's RequestRedirect.
    Redirect {
        status: StatusCode,
        location: HeaderValue,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoBackend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoMember { .. } | ProxyError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::MemberFailed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } | ProxyError::RequestTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::ConnectRefused => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ClientBody { .. } | ProxyError::DuplicateHost | ProxyError::NoHost => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Redirect { status, .. } => *status,
            ProxyError::Preflight(_) => StatusCode::NO_CONTENT,
        }
    }

    /// The gRPC status a gRPC client gets for this failure: gRPC's mapping of the HTTP status
    /// (404 UNIMPLEMENTED, 502 and 503 UNAVAILABLE, 4xx INTERNAL, 500 UNKNOWN), except that a
    /// member or route that did not answer in time is DEADLINE_EXCEEDED, as a call's own
    /// deadline is. `None` for the proxy's answers that are no failure (a redirect, a CORS
    /// preflight): they go as they are.
    pub fn grpc_status(&self) -> Option<u8> {
        Some(match self {
            ProxyError::NoRoute { .. } => grpc::UNIMPLEMENTED,
            ProxyError::NoBackend { .. } => grpc::UNKNOWN,
            ProxyError::NoMember { .. }
            | ProxyError::MemberFailed { .. }
            | ProxyError::Overloaded { .. } => grpc::UNAVAILABLE,
            ProxyError::Timeout { .. } | ProxyError::RequestTimeout { .. } => {
                grpc::DEADLINE_EXCEEDED
            }
            ProxyError::ConnectRefused
            | ProxyError::TooManyHeaders { .. }
            | ProxyError::ClientBody { .. }
            | ProxyError::ClientTimeout { .. }
            | ProxyError::DuplicateHost
            | ProxyError::Misdirected { .. }
            | ProxyError::NoHost => grpc::INTERNAL,
            ProxyError::Redirect { .. } | ProxyError::Preflight(_) => return None,
        })
    }

    /// Logs the failure and turns it into the response the client gets: for a gRPC call
    /// (`grpc`), a trailers-only answer whose `grpc-message` is the text answer's first line.
    pub fn into_response_for(self, grpc: bool) -> Response<ResponseBody> {
        let Some(code) = self.grpc_status().filter(|_| grpc) else {
            return self.into_response();
        };
        let response = self.into_response();
        let text = match response.body().full_text() {
            Some(text) => String::from_utf8_lossy(text).trim_end().to_owned(),
            None => String::new(),
        };
        let mut answer = Response::new(ResponseBody::empty());
        let headers = answer.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.extend(grpc::status_fields(code, &text));
        answer
    }

    /// Logs the failure and turns it into the response the client gets.
    pub fn into_response(self) -> Response<ResponseBody> {
        if let ProxyError::Preflight(headers) = self {
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            *response.headers_mut() = *headers;
            return response;
        }
        let status = self.status();
        self.log();
        let body = self.text();
        let mut response = match body.is_empty() {
            true => Response::new(ResponseBody::empty()),
            false => Response::new(ResponseBody::full(body)),
        };
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let ProxyError::Redirect { location, .. } = self {
            response.headers_mut().remove(header::CONTENT_TYPE);
            response.headers_mut().insert(header::LOCATION, location);
            return response;
        }
        self.add_fields(response.headers_mut());
        response
    }

    /// The log line of a failure: a warning for what an operator should look at (the member's
    /// failures, a route's backend), a debug line for what the client did or asked.
    fn log(&self) {
        match self {
            ProxyError::NoRoute { host, path } => {
                tracing::debug!(%host, %path, "no balancer serves this host and path");
            }
            ProxyError::Misdirected { server_name, host } => {
                tracing::debug!(%server_name, %host, "421 Misdirected Request: the host is another listener's");
            }
            ProxyError::NoBackend { rule } => {
                tracing::warn!(%rule, "500 Internal Server Error: the route's backend cannot be served");
            }
            ProxyError::NoMember { cluster } => {
                tracing::warn!(%cluster, cause = "no usable member", "503 Service Unavailable");
            }
            ProxyError::MemberFailed {
                cluster,
                member,
                cause,
            } => {
                tracing::warn!(%cluster, %member, %cause, "502 Bad Gateway");
            }
            ProxyError::Overloaded {
                cluster,
                member,
                cause,
            } => {
                tracing::debug!(%cluster, %member, %cause, "503 Service Unavailable");
            }
            ProxyError::Timeout {
                cluster,
                member,
                after,
            } => {
                tracing::warn!(%cluster, %member, cause = %format_args!("no response within {after:?}"), "504 Gateway Timeout");
            }
            ProxyError::RequestTimeout { after } => {
                tracing::warn!(cause = %format_args!("the route's request timeout ({after:?}) ran out"), "504 Gateway Timeout");
            }
            ProxyError::TooManyHeaders { count, limit } => {
                tracing::debug!(count, limit, "request refused: too many headers");
            }
            ProxyError::ClientBody { cause } => {
                tracing::debug!(%cause, "request refused: its body broke off or was malformed");
            }
            ProxyError::ClientTimeout { cause } => {
                tracing::debug!(%cause, "request cut off: its body stopped coming");
            }
            ProxyError::DuplicateHost => {
                tracing::debug!("request refused: more than one Host field");
            }
            ProxyError::ConnectRefused
            | ProxyError::NoHost
            | ProxyError::Redirect { .. }
            | ProxyError::Preflight(_) => {}
        }
    }

    /// The text answer's body: its first line is also a gRPC client's `grpc-message`. Empty for
    /// the answers that are no failure.
    fn text(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "404 Not Found: no balancer serves this host and path\n",
            ProxyError::Misdirected { .. } => {
                "421 Misdirected Request: this connection's server name is not for this host\n"
            }
            ProxyError::NoBackend { .. } => {
                "500 Internal Server Error: the route's backend cannot be served\n"
            }
            ProxyError::NoMember { .. } => {
                "503 Service Unavailable: no member of this balancer is available\n"
            }
            ProxyError::MemberFailed { .. } => "502 Bad Gateway: the member failed to answer\n",
            ProxyError::Overloaded { .. } => {
                "503 Service Unavailable: the member is at its connection limit; retry later\n"
            }
            ProxyError::Timeout { .. } => {
                "504 Gateway Timeout: the member did not answer in time\n"
            }
            ProxyError::RequestTimeout { .. } => {
                "504 Gateway Timeout: the request took longer than its route allows\n"
            }
            ProxyError::ConnectRefused => "405 Method Not Allowed: CONNECT is not supported\n",
            ProxyError::TooManyHeaders { .. } => {
                "431 Request Header Fields Too Large: too many headers\n"
            }
            ProxyError::ClientBody { .. } => {
                "400 Bad Request: the request body was malformed or cut short\n"
            }
            ProxyError::ClientTimeout { .. } => {
                "408 Request Timeout: the request body stopped coming\n"
            }
            ProxyError::NoHost => "400 Bad Request: no host to redirect to\n",
            ProxyError::Redirect { .. } | ProxyError::Preflight(_) => "",
            ProxyError::DuplicateHost => "400 Bad Request: more than one Host field\n",
        }
    }

    /// The fields some failures add: the connection closes after a body that stopped coming,
    /// an overloaded member's client is told when to come back, CONNECT's what it may ask.
    fn add_fields(&self, headers: &mut http::HeaderMap) {
        match self {
            ProxyError::ClientTimeout { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ProxyError::Overloaded { .. } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(RETRY_AFTER.as_secs()),
                );
            }
            ProxyError::ConnectRefused => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
    }
}
