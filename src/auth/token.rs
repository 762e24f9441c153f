//! Where a request's credentials come from.

use std::borrow::Cow;

use http::{header, request::Parts};

use crate::query::query_value;

/// The query parameter a token may come in, for clients that cannot set headers
/// (`EventSource`).
pub const TOKEN_QUERY_PARAM: &str = "access_token";

/// The cookie a token may come in.
pub const TOKEN_COOKIE: &str = "sse_token";

/// The token of the request's `Authorization: Bearer TOKEN` header, if any: the only place a
/// publish should take its token from (see [`Authorize`](super::Authorize)).
///
/// # Example
///
/// ```
/// use http::Request;
/// use tower_sse::auth::header_token;
///
/// let (parts, ()) = Request::post("/publish/t")
///     .header("authorization", "Bearer abc")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(header_token(&parts), Some("abc"));
///
/// let (parts, ()) = Request::post("/publish/t")
///     .header("cookie", "sse_token=xyz")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(header_token(&parts), None);
/// ```
pub fn header_token(request: &Parts) -> Option<&str> {
    request
        .headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .find_map(|value| {
            let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
        })
}

/// The bearer token a request presents to subscribe: in an `Authorization: Bearer TOKEN` header, else in
/// an [`access_token`](TOKEN_QUERY_PARAM) query parameter (for `EventSource`, which cannot set
/// headers), else in a cookie named [`sse_token`](TOKEN_COOKIE).
///
/// Tokens in URLs end up in access logs: prefer short-lived ones there. Do not read a
/// publisher's token with this: use [`header_token`] (see [`Authorize`](super::Authorize)).
///
/// # Example
///
/// ```
/// use http::Request;
/// use tower_sse::auth::bearer_token;
///
/// let (parts, ()) = Request::get("/events/t?access_token=abc").body(()).unwrap().into_parts();
/// assert_eq!(bearer_token(&parts).as_deref(), Some("abc"));
///
/// let (parts, ()) = Request::get("/events/t")
///     .header("cookie", "theme=dark; sse_token=xyz")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(bearer_token(&parts).as_deref(), Some("xyz"));
/// ```
pub fn bearer_token(request: &Parts) -> Option<Cow<'_, str>> {
    if let Some(token) = header_token(request) {
        return Some(Cow::Borrowed(token));
    }
    if let Some(token) = query_value(&request.uri, TOKEN_QUERY_PARAM) {
        return Some(token);
    }
    for value in request.headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for cookie in value.split(';') {
            let Some((name, token)) = cookie.split_once('=') else {
                continue;
            };
            if name.trim() != TOKEN_COOKIE {
                continue;
            }
            let token = token.trim();
            let token = token
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(token);
            if !token.is_empty() {
                return Some(Cow::Borrowed(token));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn token_sources_in_order() {
        let p = parts(
            "/e?access_token=q",
            &[("authorization", "Bearer h"), ("cookie", "sse_token=c")],
        );
        assert_eq!(bearer_token(&p).as_deref(), Some("h"));
        let p = parts(
            "/e?access_token=q",
            &[("authorization", "Basic xyz"), ("cookie", "sse_token=c")],
        );
        assert_eq!(bearer_token(&p).as_deref(), Some("q"));
        let p = parts("/e?x=1", &[("cookie", "a=b; sse_token=\"c\"")]);
        assert_eq!(bearer_token(&p).as_deref(), Some("c"));
        let p = parts("/e", &[("authorization", "bearer   t  ")]);
        assert_eq!(bearer_token(&p).as_deref(), Some("t"));
        assert_eq!(bearer_token(&parts("/e?access_token=", &[])), None);
        assert_eq!(
            bearer_token(&parts("/e", &[("cookie", "sse_token=")])),
            None
        );
    }
}
