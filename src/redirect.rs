//! Redirects: which responses redirect, where to, and with which method.

use http::header::LOCATION;
use http::{HeaderMap, Method, StatusCode};
use url::Url;

use crate::outcome::FetchError;

/// The next hop of a redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Redirect {
    pub url: Url,
    pub method: Method,
    /// The method became `GET`: send no body.
    pub drop_body: bool,
}

/// Whether the status is one that redirects (given a `Location`).
pub(crate) fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The redirect a response asks for, resolved against the URL that gave it.
///
/// `None` when the response does not redirect (not a redirect status, or no `Location`:
/// such a response is final).
pub(crate) fn follow(
    current: &Url,
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<Result<Redirect, FetchError>> {
    if !is_redirect(status) {
        return None;
    }
    let location = headers.get(LOCATION)?;
    let bad = |reason: &str| FetchError::BadRedirect {
        location: String::from_utf8_lossy(location.as_bytes()).into_owned(),
        reason: reason.to_string(),
    };
    let Ok(text) = location.to_str() else {
        return Some(Err(bad("Location is not valid text")));
    };
    let url = match current.join(text.trim()) {
        Ok(url) => url,
        Err(e) => return Some(Err(bad(&e.to_string()))),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Some(Err(bad("only http and https redirects are followed")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some(Err(bad("the target has no host")));
    }
    let to_get = match status.as_u16() {
        303 => *method != Method::HEAD,
        301 | 302 => *method != Method::GET && *method != Method::HEAD,
        _ => false,
    };
    let (method, drop_body) = if to_get {
        (Method::GET, true)
    } else {
        (method.clone(), false)
    };
    Some(Ok(Redirect {
        url,
        method,
        drop_body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn loc(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, HeaderValue::from_static(v));
        h
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn location_resolves_against_the_current_hop() {
        let r = follow(
            &url("http://b.test/x/y"),
            &Method::GET,
            StatusCode::FOUND,
            &loc("../z?q=1"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.url.as_str(), "http://b.test/z?q=1");
        assert_eq!(r.method, Method::GET);
    }

    #[test]
    fn see_other_and_post_redirects_become_get() {
        let h = loc("/next");
        let here = url("http://a.test/form");
        let r = follow(&here, &Method::POST, StatusCode::SEE_OTHER, &h)
            .unwrap()
            .unwrap();
        assert_eq!((r.method, r.drop_body), (Method::GET, true));
        let r = follow(&here, &Method::POST, StatusCode::MOVED_PERMANENTLY, &h)
            .unwrap()
            .unwrap();
        assert_eq!((r.method, r.drop_body), (Method::GET, true));
        let r = follow(&here, &Method::POST, StatusCode::TEMPORARY_REDIRECT, &h)
            .unwrap()
            .unwrap();
        assert_eq!((r.method, r.drop_body), (Method::POST, false));
        let r = follow(&here, &Method::HEAD, StatusCode::SEE_OTHER, &h)
            .unwrap()
            .unwrap();
        assert_eq!(r.method, Method::HEAD);
    }

    #[test]
    fn no_location_or_not_a_redirect_is_final() {
        let here = url("http://a.test/");
        assert!(follow(&here, &Method::GET, StatusCode::FOUND, &HeaderMap::new()).is_none());
        assert!(follow(&here, &Method::GET, StatusCode::OK, &loc("/x")).is_none());
        assert!(follow(&here, &Method::GET, StatusCode::NOT_MODIFIED, &loc("/x")).is_none());
    }

    #[test]
    fn unusable_locations_are_clear_errors() {
        let here = url("http://a.test/");
        let err = follow(
            &here,
            &Method::GET,
            StatusCode::FOUND,
            &loc("ftp://a.test/f"),
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(err.kind(), "bad_redirect");
        assert!(err.to_string().contains("ftp://a.test/f"), "{err}");
        let err = follow(&here, &Method::GET, StatusCode::FOUND, &loc("http://[::1"))
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), "bad_redirect");
    }
}
