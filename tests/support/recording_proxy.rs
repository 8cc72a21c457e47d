//! A recording proxy between a kube `Client` and the test API server: a real HTTP/1.1 server on
//! 127.0.0.1 that forwards every request through an authenticated client of the real API server
//! (tests/apiserver) and records what RBAC would be asked about it (verb, API group, resource,
//! subresource, namespace, name), so a test can check each request of the controller or the
//! update server against the roles they run with (tests/least_privilege.rs).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{Method, Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use kube::{Client, Config};

/// One request as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection
    /// (or the lower-case HTTP method for anything else).
    pub verb: String,
    /// The API group ("" for the core group); empty too for a non-resource request.
    pub group: String,
    /// The resource ("leases"); the whole path for a non-resource request.
    pub resource: String,
    /// The subresource ("status"), if any.
    pub subresource: Option<String>,
    /// The namespace; None for a cluster-wide request.
    pub namespace: Option<String>,
    /// The object's name, when the path names one.
    pub name: Option<String>,
    /// A path outside /api and /apis/<group>/<version>/<resource> (discovery, /version).
    pub non_resource: bool,
    /// The API server's answer (502 when it could not be reached).
    pub status: u16,
}

impl ApiRequest {
    /// What a request of `method` on `path?query` asks, answered with `status`.
    pub fn parse(method: &Method, path: &str, query: &str, status: u16) -> ApiRequest {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
            _ => return ApiRequest::non_resource(method, path, status),
        };
        // namespaces/<ns>/<resource>[/<name>[/<subresource>]], or a cluster-scoped
        // <resource>[/<name>[/<subresource>]] (the Namespace objects themselves included).
        let (namespace, resource, name, subresource) = match rest {
            ["namespaces", namespace, resource, tail @ ..] => {
                (Some(*namespace), *resource, tail.first(), tail.get(1))
            }
            [resource, tail @ ..] => (None, *resource, tail.first(), tail.get(1)),
            [] => unreachable!("rest is not empty"),
        };
        let watching = query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1");
        let verb = match *method {
            Method::GET if watching => "watch",
            Method::GET if name.is_some() => "get",
            Method::GET => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_some() => "delete",
            Method::DELETE => "deletecollection",
            ref other => return ApiRequest::other(other, group, resource, namespace, status),
        };
        ApiRequest {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.map(|s| (*s).to_owned()),
            namespace: namespace.map(str::to_owned),
            name: name.map(|n| (*n).to_owned()),
            non_resource: false,
            status,
        }
    }

    fn non_resource(method: &Method, path: &str, status: u16) -> ApiRequest {
        ApiRequest {
            verb: method.as_str().to_lowercase(),
            group: String::new(),
            resource: path.to_owned(),
            subresource: None,
            namespace: None,
            name: None,
            non_resource: true,
            status,
        }
    }

    fn other(
        method: &Method,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        status: u16,
    ) -> ApiRequest {
        ApiRequest {
            verb: method.as_str().to_lowercase(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            subresource: None,
            namespace: namespace.map(str::to_owned),
            name: None,
            non_resource: false,
            status,
        }
    }

    /// `resource` or `resource/subresource`, as RBAC rules name it.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }

    /// Every verb the API server authorizes for this request: its own, plus `create` for a patch
    /// that created its object (a server-side apply of an object that did not exist is
    /// authorized as a create as well: the API server answers it 201).
    pub fn authorized_verbs(&self) -> Vec<&str> {
        let mut verbs = vec![self.verb.as_str()];
        if self.verb == "patch" && self.status == 201 {
            verbs.push("create");
        }
        verbs
    }
}

impl std::fmt::Display for ApiRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.non_resource {
            return write!(
                f,
                "{} {} (non-resource) -> {}",
                self.verb, self.resource, self.status
            );
        }
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.rbac_resource())?;
        match &self.namespace {
            Some(namespace) => write!(f, " in {namespace}")?,
            None => write!(f, " cluster-wide")?,
        }
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        write!(f, " -> {}", self.status)
    }
}

type ProxyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The proxy, serving until dropped.
pub struct RecordingProxy {
    /// Where it listens (plain HTTP).
    pub address: SocketAddr,
    records: Arc<Mutex<Vec<ApiRequest>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    /// Starts a proxy on a free port of 127.0.0.1 that forwards to the API server `upstream`
    /// talks to, with `upstream`'s credentials.
    pub async fn start(upstream: Client) -> RecordingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy listens on 127.0.0.1");
        let address = listener.local_addr().expect("a bound address");
        let records = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&records);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                let records = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request| forward(upstream.clone(), Arc::clone(&records), request));
                    // A connection the client drops (a watch ended) ends here; nothing to report.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingProxy {
            address,
            records,
            accept,
        }
    }

    /// A new kube client whose every request goes through this proxy.
    pub fn client(&self) -> Client {
        let url = format!("http://{}", self.address).parse().expect("a proxy URL");
        Client::try_from(Config::new(url)).expect("a client for the proxy")
    }

    /// Every request forwarded so far, in the order they were answered.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn text_response(status: u16, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    response
}

async fn forward(
    upstream: Client,
    records: Arc<Mutex<Vec<ApiRequest>>>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let method = parts.method.clone();
    let record = |status: u16| {
        records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ApiRequest::parse(&method, &path, &query, status));
    };
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            record(400);
            return Ok(text_response(
                400,
                format!("the proxy could not read the request body: {error}"),
            ));
        }
    };
    let mut builder = Request::builder().method(parts.method).uri(
        parts
            .uri
            .path_and_query()
            .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned()),
    );
    for (name, value) in &parts.headers {
        // Hop-by-hop headers belong to the client's connection to the proxy, not upstream.
        if !matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            builder = builder.header(name, value);
        }
    }
    let upstream_request = match builder.body(kube::client::Body::from(body)) {
        Ok(request) => request,
        Err(error) => {
            record(400);
            return Ok(text_response(
                400,
                format!("the proxy could not rebuild the request: {error}"),
            ));
        }
    };
    match upstream.send(upstream_request).await {
        Ok(response) => {
            record(response.status().as_u16());
            let (mut parts, body) = response.into_parts();
            for hop in ["connection", "content-length", "transfer-encoding", "keep-alive"] {
                parts.headers.remove(hop);
            }
            Ok(Response::from_parts(
                parts,
                body.map_err(Into::into).boxed_unsync(),
            ))
        }
        Err(error) => {
            record(502);
            Ok(text_response(
                502,
                format!("the proxy could not reach the API server: {error}"),
            ))
        }
    }
}
