//! The web page at `/`: one HTML document with its script and stylesheet,
//! compiled into the binary. No build step and nothing loaded from other
//! origins, so the page works offline and wherever the router runs (the
//! local server and the API Gateway function alike).
//!
//! The document itself is revalidated on every load (`no-cache` + `ETag`);
//! it links its assets with a content hash (`?v=`), so those can be cached
//! for a year and a new build is picked up at once.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::{ApiError, query_param};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// Scripts and styles only from this origin, no inline code; images from
/// anywhere over http(s), because thumbnails load from the input URLs and
/// from wherever outputs are stored (`/files`, S3, a CDN); API calls only to
/// this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' http: https: data: blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
frame-ancestors 'none'";

const REVALIDATE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

struct Asset {
    body: String,
    content_type: &'static str,
    /// First 16 hex digits of the body's SHA-256: the `?v=` and the ETag.
    version: String,
}

impl Asset {
    fn new(body: String, content_type: &'static str) -> Self {
        let version = hex::encode(&Sha256::digest(body.as_bytes())[..8]);
        Self {
            body,
            content_type,
            version,
        }
    }

    fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

struct Assets {
    index: Asset,
    app_js: Asset,
    style_css: Asset,
}

fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let app_js = Asset::new(APP_JS.to_owned(), "text/javascript; charset=utf-8");
        let style_css = Asset::new(STYLE_CSS.to_owned(), "text/css; charset=utf-8");
        let index = INDEX_HTML
            .replace("{{app_js_version}}", &app_js.version)
            .replace("{{style_css_version}}", &style_css.version);
        Assets {
            index: Asset::new(index, "text/html; charset=utf-8"),
            app_js,
            style_css,
        }
    })
}

/// `GET /` and `GET /assets/{name}`; no token needed (the page asks for one
/// and sends it on its API calls).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&assets().index, REVALIDATE, &headers)
}

async fn asset(
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let all = assets();
    let asset = match name.as_str() {
        "app.js" => &all.app_js,
        "style.css" => &all.style_css,
        _ => return ApiError::NotFound.into_response(),
    };
    // Only a link naming this exact content may be cached for good; an old
    // or missing `v` is still answered, but revalidated next time.
    let cache = if query_param(query.as_deref(), "v").as_deref() == Some(asset.version.as_str()) {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    serve(asset, cache, &headers)
}

fn serve(asset: &Asset, cache_control: &'static str, request: &HeaderMap) -> Response {
    let etag = asset.etag();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.clone().into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Request IDs live in the page's URL fragment, which is never sent;
    // this also keeps the page's path out of requests to image hosts.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(uri: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::get(uri);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        let response = routes::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn header_of(headers: &HeaderMap, name: header::HeaderName) -> &str {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn index_is_html_revalidated_every_time_under_a_strict_policy() {
        let (status, headers, body) = get("/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            header_of(&headers, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&headers, header::CACHE_CONTROL), "no-cache");
        assert_eq!(
            header_of(&headers, header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
        let csp = header_of(&headers, header::CONTENT_SECURITY_POLICY);
        assert!(
            csp.contains("script-src 'self';") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(body.starts_with("<!doctype html>"), "{body}");
        // A policy without 'unsafe-inline' would block these: there must be none.
        assert!(
            !body.contains("<script>") && !body.contains("<style") && !body.contains(" style="),
            "inline code in index.html"
        );
        let handlers = body.split(" on").skip(1).filter(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert_eq!(handlers.count(), 0, "inline event handlers in index.html");
    }

    #[tokio::test]
    async fn assets_are_linked_by_content_hash_and_cached_for_good_only_under_it() {
        let (_, _, index) = get("/", None).await;
        for (name, content_type, source) in [
            ("app.js", "text/javascript; charset=utf-8", APP_JS),
            ("style.css", "text/css; charset=utf-8", STYLE_CSS),
        ] {
            let link = index
                .split('"')
                .find(|s| s.starts_with(&format!("assets/{name}?v=")))
                .unwrap_or_else(|| panic!("index.html links {name} relatively, with its version"));
            let (status, headers, body) = get(&format!("/{link}"), None).await;
            assert_eq!(status, StatusCode::OK, "{link}");
            assert_eq!(body, source);
            assert_eq!(header_of(&headers, header::CONTENT_TYPE), content_type);
            assert_eq!(
                header_of(&headers, header::CACHE_CONTROL),
                IMMUTABLE,
                "{link}"
            );

            let (_, stale, body) = get(&format!("/assets/{name}?v=0000000000000000"), None).await;
            assert_eq!(body, source);
            assert_eq!(header_of(&stale, header::CACHE_CONTROL), "no-cache");
        }
        let (status, headers, body) = get("/assets/secrets.txt", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            header_of(&headers, header::CONTENT_TYPE).starts_with("application/json"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_known_etag_gets_304_without_a_body() {
        let (_, headers, _) = get("/", None).await;
        let etag = header_of(&headers, header::ETAG).to_owned();
        assert!(etag.starts_with('"') && etag.len() == 18, "{etag}");
        let (status, again, body) = get("/", Some(&format!("\"other\", {etag}"))).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        assert_eq!(header_of(&again, header::ETAG), etag);
        let (status, _, _) = get("/", Some("\"other\"")).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_openapi_document_describes_what_is_served() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../openapi.json")).unwrap();
        let page = &doc["paths"]["/"]["get"];
        assert_eq!(
            page["security"],
            serde_json::json!([]),
            "the page needs no token"
        );
        let (_, headers, _) = get("/", None).await;
        let served = header_of(&headers, header::CONTENT_TYPE)
            .split(';')
            .next()
            .unwrap_or("")
            .to_owned();
        assert!(
            page["responses"]["200"]["content"][&served].is_object(),
            "{served} not documented for /"
        );

        let asset = &doc["paths"]["/assets/{name}"]["get"];
        assert_eq!(asset["security"], serde_json::json!([]));
        let names = asset["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "name")
            .unwrap()["schema"]["enum"]
            .clone();
        assert_eq!(names, serde_json::json!(["app.js", "style.css"]));
        for name in ["app.js", "style.css"] {
            let (status, headers, _) = get(&format!("/assets/{name}"), None).await;
            assert_eq!(status, StatusCode::OK);
            let served = header_of(&headers, header::CONTENT_TYPE)
                .split(';')
                .next()
                .unwrap_or("")
                .to_owned();
            assert!(
                asset["responses"]["200"]["content"][&served].is_object(),
                "{served} not documented for {name}"
            );
        }
    }

    /// The script looks elements up by ID; each must exist in the document
    /// (the browser test covers behaviour, this catches a renamed ID early).
    #[test]
    fn every_element_id_the_script_uses_is_in_the_document() {
        let mut missing = Vec::new();
        for part in APP_JS.split("byId('").skip(1) {
            let id = part.split('\'').next().unwrap_or("");
            if !INDEX_HTML.contains(&format!("id=\"{id}\"")) {
                missing.push(id.to_owned());
            }
        }
        assert!(
            APP_JS.contains("byId('"),
            "the script finds elements with byId"
        );
        assert!(missing.is_empty(), "not in index.html: {missing:?}");
    }
}
