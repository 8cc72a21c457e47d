//! HTTP hygiene: an answer that leaves the request body unread says `Connection: close`.
//!
//! When a handler answers without reading the request body to its end (a 405 or 404 from the
//! router, `GET /updates` or `/healthz` sent with a body, a 413 from [`super::handlers`]'s
//! `WholeBody`), hyper drains what is already buffered and, when more of the body is still to
//! come, closes the connection after the answer, without saying so in it. A client that kept the
//! connection for its next request then finds it closed (measured: 84 of 6,000 fuzzed requests).
//! [`close_unless_body_read`] wraps every request body, records whether it was read to its end,
//! and when it was not, adds `Connection: close` to the answer: hyper then closes the connection
//! right after it, and the client knows not to reuse it. Requests without a body are untouched,
//! and so are the plugin's own requests, whose bodies the handlers read whole.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use axum::{
    body::{Body, BodyDataStream, Bytes, HttpBody},
    extract::Request,
    http::{HeaderValue, Version, header},
    middleware::Next,
    response::Response,
};
use futures::Stream;

/// Middleware (`axum::middleware::from_fn`): answers with `Connection: close` when the request
/// had a body that the handler did not read to its end.
pub async fn close_unless_body_read(request: Request, next: Next) -> Response {
    // No body (or `Content-Length: 0`): nothing can be left unread. HTTP/2 ends an unread body
    // with its stream alone, and forbids the header.
    if request.body().is_end_stream() || request.version() >= Version::HTTP_2 {
        return next.run(request).await;
    }
    let read_to_end = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::from_stream(TrackedBody {
            inner: body.into_data_stream(),
            read_to_end: Arc::clone(&read_to_end),
        })
    });
    let mut response = next.run(request).await;
    if !read_to_end.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records when it has been read to its end.
struct TrackedBody {
    inner: BodyDataStream,
    read_to_end: Arc<AtomicBool>,
}

impl Stream for TrackedBody {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        // The end is the stream's end, or the last chunk of a body of known length.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if ended {
            self.read_to_end.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use axum::{
        Router,
        extract::DefaultBodyLimit,
        http::{Method, StatusCode},
        routing::post,
    };
    use tower::ServiceExt;

    use super::*;

    async fn read_whole(body: Bytes) -> String {
        format!("{} bytes", body.len())
    }

    async fn ignore_body() -> &'static str {
        "ok"
    }

    async fn read_one_chunk(request: Request) -> &'static str {
        let mut stream = request.into_body().into_data_stream();
        let _ = futures::StreamExt::next(&mut stream).await;
        "read a part"
    }

    fn app() -> Router {
        Router::new()
            .route("/whole", post(read_whole).get(ignore_body))
            .route("/part", post(read_one_chunk))
            .merge(
                Router::new()
                    .route("/small", post(read_whole))
                    .layer(DefaultBodyLimit::max(8)),
            )
            .layer(axum::middleware::from_fn(close_unless_body_read))
    }

    /// Answers `method path` with `body`: the status and whether it said `Connection: close`.
    async fn answer(method: Method, path: &str, body: Body) -> (StatusCode, bool) {
        answer_over(Version::HTTP_11, method, path, body).await
    }

    async fn answer_over(version: Version, method: Method, path: &str, body: Body) -> (StatusCode, bool) {
        let request = Request::builder()
            .version(version)
            .method(method)
            .uri(path)
            .body(body)
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        let close = response
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|value| value == "close");
        (response.status(), close)
    }

    fn chunks(parts: &'static [&'static str]) -> Body {
        Body::from_stream(futures::stream::iter(
            parts
                .iter()
                .map(|part| Ok::<_, std::io::Error>(Bytes::from_static(part.as_bytes()))),
        ))
    }

    #[tokio::test]
    async fn a_body_read_whole_keeps_the_connection() {
        assert_eq!(
            answer(Method::POST, "/whole", Body::from("{}")).await,
            (StatusCode::OK, false)
        );
        assert_eq!(
            answer(Method::POST, "/whole", chunks(&["a", "b", "c"])).await,
            (StatusCode::OK, false)
        );
    }

    #[tokio::test]
    async fn no_body_keeps_the_connection() {
        assert_eq!(
            answer(Method::GET, "/whole", Body::empty()).await,
            (StatusCode::OK, false)
        );
        assert_eq!(
            answer(Method::GET, "/nowhere", Body::empty()).await,
            (StatusCode::NOT_FOUND, false)
        );
    }

    #[tokio::test]
    async fn http2_answers_never_carry_the_header() {
        assert_eq!(
            answer_over(Version::HTTP_2, Method::GET, "/whole", Body::from("{}")).await,
            (StatusCode::OK, false)
        );
    }

    #[tokio::test]
    async fn a_body_left_unread_closes_the_connection() {
        // The handler takes no body.
        assert_eq!(
            answer(Method::GET, "/whole", Body::from("{}")).await,
            (StatusCode::OK, true)
        );
        // The router's method filter.
        assert_eq!(
            answer(Method::DELETE, "/whole", Body::from("{}")).await,
            (StatusCode::METHOD_NOT_ALLOWED, true)
        );
        // No route.
        assert_eq!(
            answer(Method::POST, "/nowhere", Body::from("{}")).await,
            (StatusCode::NOT_FOUND, true)
        );
        // Read in part only.
        assert_eq!(
            answer(Method::POST, "/part", chunks(&["a", "b"])).await,
            (StatusCode::OK, true)
        );
        // Over the limit.
        assert_eq!(
            answer(Method::POST, "/small", chunks(&["12345", "67890", "x"])).await,
            (StatusCode::PAYLOAD_TOO_LARGE, true)
        );
    }
}
