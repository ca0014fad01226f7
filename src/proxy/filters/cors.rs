//! A route's CORS filter: the proxy's own answer to a preflight, and the fields that allow an
//! origin on a member's answer.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};

use crate::plane::filters::Cors;
use crate::proxy::http1::LeanHead;
use crate::proxy::upstream::body::RequestBody;

pub fn header_of(
    req: &Request<RequestBody>,
    lean: Option<&LeanHead>,
    name: &HeaderName,
) -> Option<HeaderValue> {
    match lean {
        Some(head) => {
            let mut found = None;
            head.fields.any_value(name.as_str().as_bytes(), &mut |v| {
                found = HeaderValue::from_bytes(v).ok();
                true
            });
            found
        }
        None => req.headers().get(name).cloned(),
    }
}

/// The fields of the proxy's answer (204) to a CORS preflight (OPTIONS with Origin and
/// Access-Control-Request-Method): the CORS fields for an allowed origin, none for another one
/// (the browser then refuses the real request). Either way the preflight is the route's to
/// answer, never the member's: a member that answers OPTIONS must not allow an origin the route
/// does not.
pub fn preflight(
    cors: &Cors,
    req: &Request<RequestBody>,
    lean: Option<&LeanHead>,
    origin: Option<&HeaderValue>,
) -> Option<HeaderMap> {
    if req.method() != Method::OPTIONS {
        return None;
    }
    let method = header_of(req, lean, &header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let origin = origin?;
    let Some(allowed) = origin.to_str().ok().and_then(|o| cors.allowed_origin(o)) else {
        return Some(HeaderMap::new());
    };
    let mut fields = HeaderMap::new();
    let headers = &mut fields;
    insert(headers, header::ACCESS_CONTROL_ALLOW_ORIGIN, &allowed);
    let methods = match cors.allow_methods.iter().any(|m| m == "*") {
        true => method.to_str().unwrap_or("*").to_owned(),
        false => cors.allow_methods.join(", "),
    };
    insert(headers, header::ACCESS_CONTROL_ALLOW_METHODS, &methods);
    let requested = header_of(req, lean, &header::ACCESS_CONTROL_REQUEST_HEADERS);
    let allow_headers = match cors.allow_headers.iter().any(|h| h == "*") {
        true => requested.and_then(|h| h.to_str().ok().map(str::to_owned)),
        false => (!cors.allow_headers.is_empty()).then(|| cors.allow_headers.join(", ")),
    };
    if let Some(allow_headers) = allow_headers {
        insert(
            headers,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &allow_headers,
        );
    }
    if !cors.expose_headers.is_empty() {
        insert(
            headers,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &cors.expose_headers.join(", "),
        );
    }
    if let Some(max_age) = cors.max_age {
        insert(
            headers,
            header::ACCESS_CONTROL_MAX_AGE,
            &max_age.to_string(),
        );
    }
    if cors.allow_credentials {
        insert(headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    Some(fields)
}

/// The CORS fields of an answer to a request from an allowed origin.
pub fn allow(cors: &Cors, origin: &HeaderValue, headers: &mut HeaderMap) {
    let Some(allowed) = origin.to_str().ok().and_then(|o| cors.allowed_origin(o)) else {
        return;
    };
    insert(headers, header::ACCESS_CONTROL_ALLOW_ORIGIN, &allowed);
    if cors.allow_credentials {
        insert(headers, header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    }
    if !cors.expose_headers.is_empty() {
        insert(
            headers,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &cors.expose_headers.join(", "),
        );
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
