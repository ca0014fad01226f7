//! The other replicas' traffic figures, so that status shows the sum over replicas.
//!
//! The leader finds its peers as the ready endpoints of the controller's own Service (from the
//! EndpointSlices it already watches) and reads each one's balancer-manager JSON.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::discovery::endpoints::SERVICE_NAME_LABEL;

/// Traffic of one member as seen by one or more replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub elected: u64,
    pub busy: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

/// Where the peers are.
#[derive(Clone)]
pub struct PeerSource {
    /// `namespace`, `name` of the controller's Service; None for a single replica.
    pub service: Option<(String, String)>,
    /// The peers' admin port, unless the Service has a port named `admin`.
    pub admin_port: u16,
    /// The token the peers' admin servers ask for.
    pub admin_token: Option<std::sync::Arc<str>>,
    /// This replica's pod name, to leave itself out.
    pub identity: String,
    pub slices: Vec<Store<EndpointSlice>>,
}

impl PeerSource {
    /// Peer admin addresses now.
    pub fn addresses(&self) -> Vec<String> {
        let Some((namespace, name)) = &self.service else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for store in &self.slices {
            for slice in store.state() {
                if slice.namespace().as_deref() != Some(namespace.as_str())
                    || slice.labels().get(SERVICE_NAME_LABEL) != Some(name)
                {
                    continue;
                }
                let port = slice
                    .ports
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .find(|p| p.name.as_deref() == Some("admin"))
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(self.admin_port);
                for e in &slice.endpoints {
                    let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    let me = e.target_ref.as_ref().and_then(|r| r.name.as_deref())
                        == Some(self.identity.as_str());
                    if let (true, false, Some(ip)) = (ready, me, e.addresses.first()) {
                        let host = if ip.contains(':') {
                            format!("[{ip}]")
                        } else {
                            ip.clone()
                        };
                        out.push(format!("{host}:{port}"));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The peers' figures per (cluster, member URL), summed. A peer that does not answer is left
    /// out (and logged): its share is missing until it answers again.
    pub async fn traffic(&self) -> HashMap<(String, String), Traffic> {
        let mut sum: HashMap<(String, String), Traffic> = HashMap::new();
        for address in self.addresses() {
            let token = self.admin_token.as_deref();
            match tokio::time::timeout(Duration::from_secs(2), fetch(&address, token)).await {
                Ok(Ok(view)) => add(&mut sum, &view),
                Ok(Err(e)) => {
                    tracing::warn!(peer = %address, error = %e, "cannot read a peer's figures")
                }
                Err(_) => tracing::warn!(peer = %address, "a peer's figures did not come in time"),
            }
        }
        sum
    }
}

/// Adds one replica's balancer-manager JSON to `sum`.
pub fn add(sum: &mut HashMap<(String, String), Traffic>, view: &serde_json::Value) {
    let clusters = view
        .get("clusters")
        .and_then(|c| c.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for cluster in clusters {
        let Some(name) = cluster.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let members = cluster
            .get("members")
            .and_then(|m| m.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default();
        for member in members {
            let Some(url) = member.get("url").and_then(|u| u.as_str()) else {
                continue;
            };
            let n = |field: &str| member.get(field).and_then(|v| v.as_u64()).unwrap_or(0);
            let t = sum.entry((name.to_owned(), url.to_owned())).or_default();
            t.elected += n("elected");
            t.busy += n("busy");
            t.sent_bytes += n("sentBytes");
            t.received_bytes += n("receivedBytes");
        }
    }
}

async fn fetch(address: &str, token: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::get("/balancer-manager?format=json")
        .header(http::header::HOST, address)
        .body(Empty::<Bytes>::new())?;
    if let Some(token) = token {
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    let response = sender.send_request(req).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "answered {}",
        response.status()
    );
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_several_replicas_add_up() {
        let view = serde_json::json!({"clusters": [{"name": "shop/web", "members": [
            {"url": "http://10.244.0.1:8080", "elected": 3, "busy": 1, "sentBytes": 10, "receivedBytes": 20}
        ]}]});
        let mut sum = HashMap::new();
        add(&mut sum, &view);
        add(&mut sum, &view);
        assert_eq!(
            sum[&("shop/web".to_owned(), "http://10.244.0.1:8080".to_owned())],
            Traffic {
                elected: 6,
                busy: 2,
                sent_bytes: 20,
                received_bytes: 40
            }
        );
    }
}
