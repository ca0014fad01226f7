//! Sticky sessions, as Apache's `stickysession`: a request carries a member's route in a URL
//! parameter or a cookie, and goes back to that member while it can take it.
//!
//! The value is `ANYTHING.ROUTE` (`JSESSIONID=a1b2c3.web1`) or the route itself
//! (`ROUTEID=web1`, what the balancer's own cookie insert sets). As in Apache the URL is looked
//! at first (a query parameter `?name=value` or a path parameter `;name=value`), then the
//! cookie. Reading a request is pure; which member a route names is the balancer's business.

use std::collections::HashMap;

use http::Uri;
use http::header::{self, GetAll, HeaderMap, HeaderValue};

use crate::discovery::StickyConfig;

/// The sticky value the request carries, if any.
pub fn sticky_value(config: &StickyConfig, headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(param) = &config.param {
        let in_url = uri
            .query()
            .and_then(|q| query_value(q, param))
            .or_else(|| path_param(uri.path(), param));
        if let Some(v) = in_url.filter(|v| !v.is_empty()) {
            return Some(v.to_owned());
        }
    }
    let cookie = config.cookie.as_deref()?;
    cookie_value(headers.get_all(header::COOKIE), cookie)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The value of cookie `name` among the request's Cookie headers (quotes removed).
pub fn cookie_value<'a>(cookies: GetAll<'a, HeaderValue>, name: &str) -> Option<&'a str> {
    cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

/// The value of query parameter `name` (as sent, not decoded).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The value of a path parameter `;name=value` (up to the next `;`, `/` or `?`).
fn path_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    path.split(['/'])
        .flat_map(|segment| segment.split(';').skip(1))
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Whether `value` names `route`: it is the route, or ends in `.ROUTE`.
pub fn carries(value: &str, route: &str) -> bool {
    !route.is_empty()
        && (value == route
            || value
                .strip_suffix(route)
                .is_some_and(|rest| rest.ends_with('.')))
}

/// The member whose route `value` names: the whole value first, then what follows each dot,
/// longest first, so that routes may themselves contain dots.
pub fn resolve(routes: &HashMap<Box<str>, usize>, value: &str) -> Option<usize> {
    if routes.is_empty() {
        return None;
    }
    if let Some(&i) = routes.get(value) {
        return Some(i);
    }
    value
        .match_indices('.')
        .find_map(|(at, _)| routes.get(&value[at + 1..]).copied())
}

/// The `Set-Cookie` value the balancer sends when it inserts the cookie itself.
pub fn set_cookie(name: &str, route: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{name}={route}; Path=/; HttpOnly")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cookie: Option<&str>, param: Option<&str>) -> StickyConfig {
        StickyConfig {
            cookie: cookie.map(str::to_owned),
            param: param.map(str::to_owned),
            insert: false,
        }
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, cookie.parse().expect("value"));
        h
    }

    #[test]
    fn the_url_comes_first_then_the_cookie() {
        let c = config(Some("JSESSIONID"), Some("jsessionid"));
        let h = headers("a=b; JSESSIONID=abc.web1");
        let plain: Uri = "/cart".parse().expect("uri");
        assert_eq!(sticky_value(&c, &h, &plain).as_deref(), Some("abc.web1"));
        let query: Uri = "/cart?x=1&jsessionid=xyz.web2".parse().expect("uri");
        assert_eq!(sticky_value(&c, &h, &query).as_deref(), Some("xyz.web2"));
        let path: Uri = "/cart;jsessionid=p.web3?x=1".parse().expect("uri");
        assert_eq!(sticky_value(&c, &h, &path).as_deref(), Some("p.web3"));
        assert_eq!(
            sticky_value(&config(Some("ROUTEID"), None), &h, &plain),
            None
        );
        assert_eq!(
            sticky_value(&c, &headers("JSESSIONID=\"q.web4\""), &plain).as_deref(),
            Some("q.web4")
        );
    }

    #[test]
    fn a_value_names_a_route_whole_or_after_a_dot() {
        let routes: HashMap<Box<str>, usize> = [("web1", 0), ("web.2", 1)]
            .into_iter()
            .map(|(r, i)| (Box::from(r), i))
            .collect();
        assert_eq!(resolve(&routes, "web1"), Some(0));
        assert_eq!(resolve(&routes, "abc.web1"), Some(0));
        assert_eq!(resolve(&routes, "abc.def.web1"), Some(0));
        assert_eq!(resolve(&routes, "abc.web.2"), Some(1));
        assert_eq!(resolve(&routes, "abcweb1"), None);
        assert_eq!(resolve(&routes, "abc.web3"), None);
        assert!(carries("abc.web1", "web1") && carries("web1", "web1"));
        assert!(!carries("abcweb1", "web1") && !carries("web1", ""));
    }

    #[test]
    fn inserted_cookie_is_the_route_for_the_whole_site() {
        assert_eq!(
            set_cookie("ROUTEID", "3fa9c2e1b0d4").expect("value"),
            "ROUTEID=3fa9c2e1b0d4; Path=/; HttpOnly"
        );
    }
}
