//! Standalone mode: BalancerCluster documents from a YAML file, served without Kubernetes and
//! reloaded when the file changes.
//!
//! A file goes through the same schema and the same CEL rules as the CRD (defaults applied
//! first, as the API server does), so a resource is refused here with the API server's message.
//! An invalid file is refused whole and the previous configuration keeps serving.
//!
//! Certificates (`spec.tls[].certFile`/`keyFile`, `upstreamTLS.caFile` and the client
//! certificate's files; relative paths are from the configuration file's folder) are read with
//! the file and whenever their folders change, as Kubernetes updates a mounted Secret by
//! swapping a symbolic link. They are published again only when their bytes changed; a refused
//! certificate leaves the previous one serving.

mod schema;
mod yaml;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::CustomResourceExt;

use crate::api::text::{cut, quote, shorten_quoted};
use crate::api::{BalancerCluster, GROUP, VERSION};
use crate::discovery::{self, ClusterConfig, TlsSource};
use crate::plane::DataPlane;
use crate::tls::material::{Loader, Material};

/// The seed's setup, served when no file is given.
pub const EMBEDDED: &str = include_str!("../../examples/seed.yaml");

/// Why a configuration was refused. The message names the file, the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {}", too_large(*.size, *.limit))]
    TooLarge {
        file: String,
        /// The file's size, when the file system tells it.
        size: Option<u64>,
        limit: u64,
    },
    #[error("{file}: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: document {document}{what}: {field}: {message}")]
    Invalid {
        file: String,
        document: usize,
        what: String,
        field: String,
        message: String,
    },
}

/// The largest configuration file standalone mode reads: 4 MiB, far more than any set of
/// balancers written by hand needs, and little enough that a stray file (a log, a dump) cannot
/// take the process's memory.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads and checks a file.
pub fn load(path: &Path) -> Result<Vec<ClusterConfig>, ConfigError> {
    check(path, &read(path)?)
}

/// Checks bytes read from `path` by [`read`]: one byte more than allowed means the file is too
/// large, and its size is asked from the file system only for the message.
fn check(path: &Path, bytes: &[u8]) -> Result<Vec<ClusterConfig>, ConfigError> {
    let file = path.display().to_string();
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        let size = std::fs::metadata(path)
            .ok()
            .map(|m| m.len())
            .filter(|&size| size > MAX_FILE_BYTES);
        return Err(ConfigError::TooLarge {
            file,
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    parse_bytes(&file, bytes)
}

fn too_large(size: Option<u64>, limit: u64) -> String {
    match size {
        Some(size) => format!(
            "the file has {}, and a configuration file may have at most {}",
            describe_bytes(size),
            describe_bytes(limit)
        ),
        None => format!(
            "the file has more than the {} a configuration file may have",
            describe_bytes(limit)
        ),
    }
}

/// `67108864 bytes (64 MiB)`, `5000000 bytes (4.8 MiB)`, or just `100 bytes`.
fn describe_bytes(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    // A size of whole MiB is said so; any other is rounded to a tenth, as a hint only (the
    // exact count comes first).
    if bytes.is_multiple_of(MIB) && bytes > 0 {
        format!("{bytes} bytes ({} MiB)", bytes / MIB)
    } else if bytes >= MIB / 10 {
        format!("{bytes} bytes ({:.1} MiB)", bytes as f64 / MIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

/// Checks a file's bytes, which must be UTF-8 text.
fn parse_bytes(file: &str, bytes: &[u8]) -> Result<Vec<ClusterConfig>, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Yaml {
        file: file.to_owned(),
        message: format!("not UTF-8 text: {e}"),
    })?;
    parse(file, text)
}

/// Checks the BalancerCluster documents of a YAML text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Vec<ClusterConfig>, ConfigError> {
    let mut clusters = Vec::new();
    // Each cluster's document number (empty documents are skipped).
    let mut numbers = Vec::new();
    let mut seen = HashSet::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let value = yaml::document(document).map_err(|e| ConfigError::Yaml {
            file: file.to_owned(),
            message: shorten_quoted(&format!("document {number}: {e}")),
        })?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let cluster =
            check_document(value).map_err(|(what, field, message)| ConfigError::Invalid {
                file: file.to_owned(),
                document: number,
                what,
                // A field path can hold a user's key, and a message a user's value.
                field: cut(&field),
                message: shorten_quoted(&message),
            })?;
        let key = cluster.key();
        if !seen.insert(key.clone()) {
            let key = cut(&key);
            return Err(ConfigError::Invalid {
                file: file.to_owned(),
                document: number,
                what: format!(" (BalancerCluster {key})"),
                field: "metadata.name".to_owned(),
                message: format!("{key} is defined twice"),
            });
        }
        clusters.push(cluster);
        numbers.push(number);
    }
    if let Some((index, key, field, message)) = unknown_mirror(&clusters) {
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            document: numbers.get(index).copied().unwrap_or(index + 1),
            what: format!(" (BalancerCluster {})", cut(&key)),
            field,
            message,
        });
    }
    // An empty file is far more often a file caught half-written than a wish to serve nothing.
    if clusters.is_empty() {
        return Err(ConfigError::Yaml {
            file: file.to_owned(),
            message: "holds no BalancerCluster document".to_owned(),
        });
    }
    Ok(clusters)
}

type DocumentError = (String, String, String);

fn check_document(value: serde_json::Value) -> Result<ClusterConfig, DocumentError> {
    let name = value
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default")
        .to_owned();
    let what = match &name {
        Some(n) => format!(" (BalancerCluster {})", cut(&format!("{namespace}/{n}"))),
        None => String::new(),
    };
    let fail = |field: &str, message: String| (what.clone(), field.to_owned(), message);

    let expected_api = format!("{GROUP}/{VERSION}");
    for (field, expected) in [
        ("apiVersion", expected_api.as_str()),
        ("kind", "BalancerCluster"),
    ] {
        match value.get(field) {
            Some(serde_json::Value::String(v)) if v == expected => {}
            None | Some(serde_json::Value::Null) => {
                return Err(fail(field, format!("is missing; it must be {expected}")));
            }
            Some(other) => {
                let found = match other {
                    serde_json::Value::String(v) => quote(v),
                    other => cut(&other.to_string()),
                };
                return Err(fail(field, format!("must be {expected}, found {found}")));
            }
        }
    }
    if name.as_deref().is_none_or(str::is_empty) {
        return Err(fail(
            "metadata.name",
            "is missing; every BalancerCluster needs a name".to_owned(),
        ));
    }

    // The API server's order: the schema's structural checks, its defaults, then the CEL
    // rules. Status is the controller's to write, and a file has none to give: it is left out,
    // as the API server leaves it out of what a client sends.
    let mut value = value;
    if let Some(fields) = value.as_object_mut() {
        fields.remove("status");
    }
    let schema = crd_schema();
    schema::check(schema, &value).map_err(|p| fail(&p.field, p.message))?;
    let value = kube::core::cel::apply_defaults(schema, &value);
    if let Err(errors) = kube::core::cel::Validator::new().validate(schema, &value, None) {
        let first = errors.as_slice().first();
        let field = first.map(|e| e.field_path.clone()).unwrap_or_default();
        let message = first
            .map(|e| e.message.clone())
            .unwrap_or_else(|| errors.to_string());
        return Err(fail(&field, message));
    }
    let bc: BalancerCluster = serde_path_to_error::deserialize(&value).map_err(|e| {
        let field = e.path().to_string();
        fail(&field, e.into_inner().to_string())
    })?;
    let config =
        discovery::cluster_config(&bc, Vec::new()).map_err(|e| fail(&e.field, e.message))?;
    // A route that cannot be served refuses the file, as an invalid field does: a file has
    // no status to report it in.
    if let Some(p) = config.route_problems.first() {
        return Err(fail(&p.field, p.message.clone()));
    }
    Ok(config)
}

/// The first mirror that names a BalancerCluster the file does not hold, as the document's
/// number, its cluster, the field and the message.
fn unknown_mirror(clusters: &[ClusterConfig]) -> Option<(usize, String, String, String)> {
    let keys: HashSet<String> = clusters.iter().map(ClusterConfig::key).collect();
    clusters.iter().enumerate().find_map(|(number, c)| {
        c.routes.iter().enumerate().find_map(|(i, route)| {
            route.filters.iter().enumerate().find_map(|(j, f)| {
                let name = &f.request_mirror.as_ref()?.backend_ref.name;
                let key = format!("{}/{name}", c.namespace);
                (!keys.contains(&key)).then(|| {
                    (
                        number,
                        c.key(),
                        format!("spec.routes[{i}].filters[{j}].requestMirror.backendRef.name"),
                        format!(
                            "names the BalancerCluster {}, which this file does not hold: mirrors go to a BalancerCluster of the same namespace",
                            cut(&key)
                        ),
                    )
                })
            })
        })
    })
}

fn crd_schema() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        BalancerCluster::crd()
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(serde_json::Value::Null)
    })
}

/// Serves `path` (or the embedded seed setup when `None`) and reloads it whenever it, or a
/// certificate it names, changes. Returns an error only if the first load fails; later failures
/// are logged and counted.
pub async fn run(path: Option<PathBuf>, plane: Arc<DataPlane>) -> Result<(), ConfigError> {
    let Some(path) = path else {
        let clusters = parse("(embedded seed configuration)", EMBEDDED)?;
        publish(
            &plane,
            clusters,
            &Material::default(),
            "the embedded seed configuration",
        );
        return Ok(());
    };
    // Watching starts before the first read, so that no change slips between the two.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = watch_folder(&path, tx);
    let file = path.display().to_string();
    let bytes = read(&path)?;
    let clusters = anchor_paths(check(&path, &bytes)?, &path);
    let (tls_tx, tls_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tls = TlsFiles::new(tls_tx);
    tls.follow(&clusters);
    publish(&plane, clusters.clone(), &tls.loader.material(), &file);
    if let Some(watcher) = watcher {
        let state = Reloader {
            path,
            plane,
            _watcher: watcher,
            last: bytes,
            clusters,
            tls,
        };
        tokio::spawn(state.run(rx, tls_rx));
    }
    Ok(())
}

/// Makes the relative paths of TLS files relative to the configuration file's folder.
fn anchor_paths(mut clusters: Vec<ClusterConfig>, config: &Path) -> Vec<ClusterConfig> {
    let Some(folder) = config.parent() else {
        return clusters;
    };
    let anchor = |source: &mut TlsSource| {
        if let TlsSource::Files { cert, key } = source {
            if cert.is_relative() {
                *cert = folder.join(&*cert);
            }
            if let Some(key) = key
                && key.is_relative()
            {
                *key = folder.join(&*key);
            }
        }
    };
    for c in &mut clusters {
        for entry in &mut c.tls.certificates {
            anchor(&mut entry.source);
        }
        if let Some(u) = &mut c.tls.upstream {
            if let Some(ca) = &mut u.ca {
                anchor(ca);
            }
            if let Some(client) = &mut u.client_cert {
                anchor(client);
            }
        }
    }
    clusters
}

/// The certificates the clusters name, read from files, and the watch on their folders.
struct TlsFiles {
    loader: Loader,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
    watcher: Option<notify::RecommendedWatcher>,
    folders: HashSet<PathBuf>,
}

impl TlsFiles {
    fn new(tx: tokio::sync::mpsc::UnboundedSender<()>) -> Self {
        TlsFiles {
            loader: Loader::default(),
            tx,
            watcher: None,
            folders: HashSet::new(),
        }
    }

    /// Watches the folders of the files `clusters` name (when they changed), reads every file,
    /// and forgets the ones no cluster names any more. Returns whether the material changed.
    /// A file reached through a symbolic link is watched in the link's folder and in its
    /// target's, which a renewal may change.
    fn follow(&mut self, clusters: &[ClusterConfig]) -> bool {
        let folders: HashSet<PathBuf> = clusters
            .iter()
            .flat_map(|c| c.tls.sources())
            .filter_map(|(s, _)| match s {
                TlsSource::Files { cert, key } => Some(
                    std::iter::once(cert)
                        .chain(key.iter())
                        .flat_map(|p| {
                            std::iter::once(folder_of(p))
                                .chain(std::fs::canonicalize(p).ok().map(|t| folder_of(&t)))
                        })
                        .collect::<Vec<_>>(),
                ),
                TlsSource::Secret { .. } | TlsSource::ConfigMap { .. } => None,
            })
            .flatten()
            .collect();
        if folders != self.folders {
            self.watcher = watch_tls_folders(&folders, self.tx.clone());
            self.folders = folders;
        }
        self.read(clusters)
    }

    /// Reads every file `clusters` name; returns whether the material changed.
    fn read(&mut self, clusters: &[ClusterConfig]) -> bool {
        let before = self.loader.version();
        let now = crate::tls::unix_now();
        let mut keypairs = HashSet::new();
        let mut cas = HashSet::new();
        for (source, is_ca) in clusters.iter().flat_map(|c| c.tls.sources()) {
            match source {
                TlsSource::Secret { .. } | TlsSource::ConfigMap { .. } => {
                    let why = "Secrets are read in a cluster only; standalone mode reads certFile and keyFile".to_owned();
                    if is_ca {
                        self.loader.offer_ca(source, Err(why), now);
                    } else {
                        self.loader.offer_keypair(source, Err(why), now);
                    }
                }
                TlsSource::Files { cert, key } => {
                    let cert_bytes = std::fs::read(cert)
                        .map_err(|e| format!("cannot read {}: {e}", cert.display()));
                    if is_ca {
                        self.loader.offer_ca(
                            source,
                            cert_bytes.as_deref().map_err(Clone::clone),
                            now,
                        );
                    } else {
                        let key_bytes = match key {
                            Some(key) => std::fs::read(key)
                                .map_err(|e| format!("cannot read {}: {e}", key.display())),
                            None => Err("no keyFile given".to_owned()),
                        };
                        let content = match (&cert_bytes, &key_bytes) {
                            (Ok(c), Ok(k)) => Ok((c.as_slice(), k.as_slice())),
                            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
                        };
                        self.loader.offer_keypair(source, content, now);
                    }
                }
            }
            if is_ca {
                cas.insert(source.clone());
            } else {
                keypairs.insert(source.clone());
            }
        }
        self.loader.retain(&keypairs, &cas);
        self.loader.version() != before
    }
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Watches the folders holding certificates: any change in them may be a new certificate (a
/// Secret volume changes through a link named `..data`, not through the files' own names), and
/// the bytes read tell whether it was.
fn watch_tls_folders(
    folders: &HashSet<PathBuf>,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};

    if folders.is_empty() {
        return None;
    }
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && may_change_content(&event.kind)
            {
                let _ = tx.send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the certificate files; renewed certificates will not be picked up");
            return None;
        }
    };
    for folder in folders {
        if let Err(e) = watcher.watch(folder, RecursiveMode::NonRecursive) {
            tracing::error!(error = %e, folder = %folder.display(), "cannot watch a certificate folder; renewed certificates in it will not be picked up");
        }
    }
    Some(watcher)
}

/// The file's bytes, at most [`MAX_FILE_BYTES`] and one more: enough to tell that a file is
/// too large without reading the rest of it.
fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let failed = |source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    Ok(bytes)
}

fn publish(plane: &DataPlane, clusters: Vec<ClusterConfig>, material: &Material, from: &str) {
    let names: Vec<String> = clusters.iter().map(ClusterConfig::key).collect();
    let snapshot = plane.publish_with(clusters, material);
    tracing::info!(source = from, clusters = %names.join(", "), generation = snapshot.generation, "configuration loaded");
    for c in &snapshot.conflicts {
        let host = c.host.as_deref().unwrap_or("any host");
        tracing::warn!(cluster = %c.cluster, %host, path = %c.path_prefix, held_by = %c.held_by, "route already taken by an earlier cluster; not served");
    }
    for (cluster, tls) in &snapshot.tls.clusters {
        for p in &tls.problems {
            tracing::warn!(%cluster, reason = p.reason, problem = %p.message, "TLS not served as configured");
        }
    }
}

/// Watches the file's folder (editors replace files rather than write them in place): each
/// event that can change the file's content sends on `tx`. Only creation, modification, removal
/// and renames count: reading the file, ours included, raises open and close events, and
/// reacting to those would reload forever.
fn watch_folder(
    path: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};

    let file_name = path.file_name().map(|n| n.to_owned());
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && may_change_content(&event.kind)
                && event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == file_name.as_deref())
            {
                let _ = tx.send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the configuration file; changes will not be picked up");
            return None;
        }
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Err(e) = watcher.watch(&folder, RecursiveMode::NonRecursive) {
        tracing::error!(error = %e, folder = %folder.display(), "cannot watch the configuration folder; changes will not be picked up");
        return None;
    }
    Some(watcher)
}

/// What the reloading task keeps between changes.
struct Reloader {
    path: PathBuf,
    plane: Arc<DataPlane>,
    _watcher: notify::RecommendedWatcher,
    /// The configuration's bytes at the last load (served or refused).
    last: Vec<u8>,
    /// The clusters served now.
    clusters: Vec<ClusterConfig>,
    tls: TlsFiles,
}

impl Reloader {
    /// Reloads the file, or the certificates, after each burst of changes settles. Bytes equal
    /// to the last load's (served or refused) are no change, as after a `touch` or a rewrite
    /// with the same text: they are neither published, nor logged, nor counted, so the balancing
    /// schedule goes on where it was.
    async fn run(
        mut self,
        mut config_events: tokio::sync::mpsc::UnboundedReceiver<()>,
        mut tls_events: tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        loop {
            let config_changed = tokio::select! {
                event = config_events.recv() => match event {
                    Some(()) => true,
                    None => return,
                },
                Some(()) = tls_events.recv() => false,
            };
            // Let a burst of events (truncate, write, rename) settle before reading.
            tokio::time::sleep(Duration::from_millis(50)).await;
            // The file source's work counts as the controller's does (/metrics).
            let work = &crate::plane::metrics::CONTROLLER;
            work.watch_event("File");
            let started = std::time::Instant::now();
            let mut config_changed = config_changed;
            while config_events.try_recv().is_ok() {
                work.watch_event("File");
                config_changed = true;
            }
            while tls_events.try_recv().is_ok() {
                work.watch_event("File");
            }
            if config_changed {
                self.reload_config();
            }
            // After a configuration change too: its certificates may have changed as well.
            if self.tls.follow(&self.clusters) {
                let file = self.path.display().to_string();
                publish(
                    &self.plane,
                    self.clusters.clone(),
                    &self.tls.loader.material(),
                    &format!("certificates of {file}"),
                );
            }
            work.reconciled(started.elapsed());
        }
    }

    fn reload_config(&mut self) {
        let file = self.path.display().to_string();
        let bytes = match read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Gone for a moment (a rename over it) or unreadable: the next event tells.
                tracing::debug!(error = %e, "configuration file not readable now");
                return;
            }
        };
        if bytes == self.last {
            return;
        }
        let loaded = check(&self.path, &bytes);
        self.last = bytes;
        match loaded {
            Ok(clusters) => {
                self.clusters = anchor_paths(clusters, &self.path);
                self.tls.follow(&self.clusters);
                publish(
                    &self.plane,
                    self.clusters.clone(),
                    &self.tls.loader.material(),
                    &file,
                );
            }
            Err(e) => {
                self.plane.refused_config();
                tracing::error!(error = %e, "configuration refused; the previous one keeps serving");
            }
        }
    }
}

/// Whether a file event can mean new content. Opening, reading and closing cannot.
fn may_change_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        // A writer closing the file it wrote: the content is final now.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::routes::RouteConfig;

    #[test]
    fn the_seed_file_is_the_apache_setup() {
        let clusters = parse("seed.yaml", EMBEDDED).expect("valid");
        assert_eq!(clusters.len(), 1);
        let c = &clusters[0];
        assert_eq!(c.key(), "default/mycluster");
        let urls: Vec<&str> = c.members.iter().map(|m| m.url.as_str()).collect();
        assert_eq!(urls, ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].describe(), "*/");
        assert_eq!(c.route_configs, [RouteConfig::everything()]);
    }

    fn refusal(yaml: &str) -> String {
        parse("bad.yaml", yaml)
            .expect_err("must be refused")
            .to_string()
    }

    const HEAD: &str = "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web, namespace: shop}\n";

    #[test]
    fn cel_rule_messages_name_file_document_and_field() {
        let yaml = format!(
            "{HEAD}spec:\n  members:\n    - url: http://127.0.0.1:1\n      loadFactor: 0\n"
        );
        assert_eq!(
            refusal(&yaml),
            "bad.yaml: document 1 (BalancerCluster shop/web): spec.members[0].loadFactor: loadFactor must be between 1 and 100"
        );
    }

    #[test]
    fn second_document_is_named() {
        let yaml = format!(
            "{HEAD}spec:\n  members: [{{url: http://127.0.0.1:1}}]\n---\n{HEAD}spec: {{}}\n"
        );
        let e = refusal(&yaml);
        assert!(
            e.starts_with("bad.yaml: document 2 (BalancerCluster shop/web): spec: "),
            "{e}"
        );
        assert!(
            e.ends_with("a balancer needs members: give spec.service, spec.members, or both"),
            "{e}"
        );
    }

    #[test]
    fn unknown_state_and_bad_duration_are_refused() {
        let yaml = format!(
            "{HEAD}spec:\n  members:\n    - url: http://127.0.0.1:1\n      state: Sleepy\n"
        );
        let e = refusal(&yaml);
        assert!(
            e.contains("spec.members[0].state") && e.contains("Sleepy"),
            "{e}"
        );
        let yaml = format!(
            "{HEAD}spec:\n  members: [{{url: http://127.0.0.1:1}}]\n  timeouts: {{connect: 5 seconds}}\n"
        );
        assert_eq!(
            refusal(&yaml),
            "bad.yaml: document 1 (BalancerCluster shop/web): spec.timeouts.connect: must be a duration such as 500ms, 5s or 1m30s"
        );
    }

    #[test]
    fn wrong_kind_and_duplicates_are_refused() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n";
        assert_eq!(
            refusal(yaml),
            "bad.yaml: document 1 (BalancerCluster default/x): apiVersion: must be kubebalancer.io/v1alpha1, found \"v1\""
        );
        let messages = [
            (
                "kind: BalancerCluster\nmetadata: {name: x}\n",
                "apiVersion: is missing; it must be kubebalancer.io/v1alpha1",
            ),
            (
                "apiVersion: kubebalancer.io/v2\nkind: BalancerCluster\nmetadata: {name: x}\n",
                "apiVersion: must be kubebalancer.io/v1alpha1, found \"kubebalancer.io/v2\"",
            ),
            (
                "apiVersion: kubebalancer.io/v1alpha1\nkind: 5\nmetadata: {name: x}\n",
                "kind: must be BalancerCluster, found 5",
            ),
            (
                "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {namespace: x}\n",
                "metadata.name: is missing; every BalancerCluster needs a name",
            ),
            (
                "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: x}\n",
                "spec: is missing",
            ),
            (
                &format!("{HEAD}spec:\n  members: [{{loadFactor: 2}}]\n"),
                "spec.members[0].url: is missing",
            ),
            (
                &format!(
                    "{HEAD}spec:\n  members: [{{url: http://127.0.0.1:1, loadFactor: two}}]\n"
                ),
                "spec.members[0].loadFactor: must be a whole number; found \"two\"",
            ),
            (
                &format!(
                    "{HEAD}spec:\n  members: [{{url: http://127.0.0.1:1}}]\n  failover: {{noFailover: sometimes}}\n"
                ),
                "spec.failover.noFailover: must be true or false; found \"sometimes\"",
            ),
            (
                &format!("{HEAD}spec:\n  service: {{name: web, port: [80]}}\n"),
                "spec.service.port: must be a whole number or a name; found a list",
            ),
        ];
        for (yaml, expected) in messages {
            let e = refusal(yaml);
            assert!(e.ends_with(expected), "{e}");
        }
        let doc = format!("{HEAD}spec:\n  members: [{{url: http://127.0.0.1:1}}]\n");
        let e = refusal(&format!("{doc}---\n{doc}"));
        assert!(
            e.contains("document 2") && e.contains("shop/web is defined twice"),
            "{e}"
        );
    }

    #[test]
    fn a_member_listed_twice_is_refused_naming_it() {
        let yaml = format!(
            "{HEAD}spec:\n  members:\n    - url: http://127.0.0.1:1\n    - url: http://127.0.0.1:2\n    - {{url: http://127.0.0.1:1, loadFactor: 3}}\n"
        );
        assert_eq!(
            refusal(&yaml),
            "bad.yaml: document 1 (BalancerCluster shop/web): spec.members: member http://127.0.0.1:1 is listed more than once: list each member once, and give it a loadFactor for a larger share"
        );
        // Two spellings of one member.
        let yaml = format!(
            "{HEAD}spec:\n  members:\n    - url: http://127.0.0.1:1\n    - url: http://127.0.0.1:1/\n"
        );
        assert!(
            refusal(&yaml).ends_with(
                "spec.members[1].url: \"http://127.0.0.1:1/\" is the same member as spec.members[0].url (\"http://127.0.0.1:1\"): list each member once, and give it a loadFactor for a larger share"
            ),
            "{}",
            refusal(&yaml)
        );
    }

    #[test]
    fn a_cluster_lists_at_most_128_static_members() {
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("    - url: http://10.0.{}.{}:80\n", i / 256, i % 256))
                .collect::<String>()
        };
        let yaml = format!("{HEAD}spec:\n  members:\n{}", members(128));
        assert_eq!(
            parse("ok.yaml", &yaml).expect("valid")[0].members.len(),
            128
        );
        let yaml = format!("{HEAD}spec:\n  members:\n{}", members(129));
        assert_eq!(
            refusal(&yaml),
            "bad.yaml: document 1 (BalancerCluster shop/web): spec.members: may hold at most 128 items; found 129"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_the_field_meant() {
        let cases = [
            (
                "  lbmethod: bytraffic\n  members: [{url: http://127.0.0.1:1}]\n",
                "spec.lbmethod: unknown field; did you mean `lbMethod`?",
            ),
            (
                "  members: [{url: http://127.0.0.1:1, loadfactor: 3}]\n",
                "spec.members[0].loadfactor: unknown field; did you mean `loadFactor`?",
            ),
            (
                "  members: [{url: http://127.0.0.1:1}]\n  stickysession: {cookie: ROUTEID}\n",
                "spec.stickysession: unknown field; did you mean `stickySession`?",
            ),
            (
                "  members: [{url: http://127.0.0.1:1}]\n  helthCheck: {}\n",
                "spec.helthCheck: unknown field; did you mean `healthCheck`?",
            ),
            (
                "  members: [{url: http://127.0.0.1:1}]\n  timeouts: {conect: 1s}\n",
                "spec.timeouts.conect: unknown field; did you mean `connect`?",
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(
                refusal(&format!("{HEAD}spec:\n{spec}")),
                format!("bad.yaml: document 1 (BalancerCluster shop/web): {expected}")
            );
        }
        // Nothing close: the fields there are listed.
        let e = refusal(&format!(
            "{HEAD}spec:\n  members: [{{url: http://127.0.0.1:1}}]\n  cache: {{size: 10}}\n"
        ));
        assert!(
            e.starts_with(
                "bad.yaml: document 1 (BalancerCluster shop/web): spec.cache: unknown field; the fields here are "
            ) && e.contains("lbMethod, "),
            "{e}"
        );
        // Outside spec too.
        assert_eq!(
            refusal(
                "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web, namepsace: shop}\nspec: {}\n"
            ),
            "bad.yaml: document 1 (BalancerCluster default/web): metadata.namepsace: unknown field; did you mean `namespace`?"
        );
        assert_eq!(
            refusal(&format!(
                "{HEAD}sepc:\n  members: [{{url: http://127.0.0.1:1}}]\n"
            )),
            "bad.yaml: document 1 (BalancerCluster shop/web): sepc: unknown field; did you mean `spec`?"
        );
        // A field given twice: one of the two would be dropped.
        assert_eq!(
            refusal(&format!(
                "{HEAD}spec:\n  lbMethod: ewma\n  members: [{{url: http://127.0.0.1:1}}]\n  lbMethod: hash\n"
            )),
            "bad.yaml: document 1: spec: the field \"lbMethod\" is given twice at line 5 column 3"
        );
    }

    #[test]
    fn an_empty_file_is_refused() {
        assert_eq!(refusal(""), "bad.yaml: holds no BalancerCluster document");
        assert_eq!(
            refusal("---\n# nothing\n"),
            "bad.yaml: holds no BalancerCluster document"
        );
    }

    #[test]
    fn a_file_over_the_limit_is_refused_with_its_size_and_the_limit() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("big.yaml");
        let size = MAX_FILE_BYTES + 10;
        std::fs::write(&path, vec![b'#'; usize::try_from(size).expect("fits")]).expect("write");
        assert_eq!(
            load(&path).expect_err("too large").to_string(),
            format!(
                "{}: the file has 4194314 bytes (4.0 MiB), and a configuration file may have at most 4194304 bytes (4 MiB)",
                path.display()
            )
        );
        // Exactly at the limit is fine as far as size goes (this one holds only a comment).
        std::fs::write(&path, vec![b'#'; 4 * 1024 * 1024]).expect("write");
        assert_eq!(
            load(&path).expect_err("empty").to_string(),
            format!("{}: holds no BalancerCluster document", path.display())
        );
    }

    #[test]
    fn an_endless_file_is_read_no_further_than_the_limit() {
        // /dev/zero never ends and has no size: reading it whole would never return.
        assert_eq!(
            load(Path::new("/dev/zero"))
                .expect_err("too large")
                .to_string(),
            "/dev/zero: the file has more than the 4194304 bytes (4 MiB) a configuration file may have"
        );
    }

    #[test]
    fn a_huge_value_is_cut_in_the_message() {
        let huge = "A".repeat(1 << 20);
        let yaml = format!(
            "{HEAD}spec:\n  members:\n    - url: http://127.0.0.1:1\n      state: {huge}\n"
        );
        assert_eq!(
            refusal(&yaml),
            format!(
                "bad.yaml: document 1 (BalancerCluster shop/web): spec.members[0].state: must be one of \"Enabled\", \"Disabled\", \"Stopped\", \"Drain\", \"HotStandby\", \"HotSpare\"; found \"{}…\" (1048576 characters)",
                "A".repeat(100)
            )
        );
        let name = "n".repeat(1000);
        let yaml = format!(
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {{name: {name}}}\nspec: {{}}\n"
        );
        let e = refusal(&yaml);
        assert!(
            e.starts_with(&format!(
                "bad.yaml: document 1 (BalancerCluster default/{}…): spec: ",
                "n".repeat(92)
            )),
            "{e}"
        );
    }

    #[test]
    fn yaml_syntax_errors_say_where() {
        let e = refusal("apiVersion: [\n");
        assert!(e.starts_with("bad.yaml: document 1: "), "{e}");
        assert!(e.contains("line"), "{e}");
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use crate::discovery::TlsSource;

    const HEAD: &str = "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web, namespace: shop}\n";

    fn refusal(spec: &str) -> String {
        parse("bad.yaml", &format!("{HEAD}spec:\n{spec}"))
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn tls_settings_reach_the_cluster_config() {
        let yaml = format!(
            "{HEAD}spec:\n  members: [{{url: 'https://backend.internal:8443'}}]\n  tls:\n    - {{hosts: [shop.example.com, '*.shop.example.com'], certFile: tls/shop.crt, keyFile: tls/shop.key, default: true}}\n  httpsRedirect: true\n  hsts: {{includeSubDomains: true}}\n  upstreamTLS: {{caFile: /etc/ca.crt, serverName: backend.internal}}\n"
        );
        let clusters = anchor_paths(
            parse("x.yaml", &yaml).expect("valid"),
            Path::new("/etc/kb/balancer.yaml"),
        );
        let c = &clusters[0];
        assert_eq!(c.members[0].url, "https://backend.internal:8443");
        assert!(c.members[0].is_tls());
        let tls = &c.tls;
        assert_eq!(tls.certificates.len(), 1);
        assert_eq!(
            tls.certificates[0].source,
            TlsSource::Files {
                cert: "/etc/kb/tls/shop.crt".into(),
                key: Some("/etc/kb/tls/shop.key".into())
            }
        );
        assert!(tls.certificates[0].default);
        assert!(tls.https_redirect);
        let hsts = tls.hsts.clone().expect("hsts");
        assert_eq!(
            (hsts.max_age_seconds, hsts.include_sub_domains, hsts.preload),
            (31_536_000, true, false)
        );
        let upstream = tls.upstream.clone().expect("upstream");
        assert_eq!(
            upstream.ca,
            Some(TlsSource::Files {
                cert: "/etc/ca.crt".into(),
                key: None
            })
        );
        assert_eq!(upstream.server_name.as_deref(), Some("backend.internal"));
        assert!(!upstream.insecure_skip_verify);
    }

    #[test]
    fn an_https_member_alone_is_verified_with_the_defaults() {
        let yaml = format!(
            "{HEAD}spec:\n  members: [{{url: 'https://a.example.com'}}, {{url: 'http://b:80'}}]\n"
        );
        let c = &parse("x.yaml", &yaml).expect("valid")[0];
        assert_eq!(c.members[0].authority, "a.example.com:443");
        assert_eq!(c.tls.upstream, Some(Default::default()));
        let plain = format!("{HEAD}spec:\n  members: [{{url: 'http://b:80'}}]\n");
        assert_eq!(
            parse("x.yaml", &plain).expect("valid")[0].tls.upstream,
            None
        );
    }

    #[test]
    fn tls_mistakes_are_refused_with_clear_messages() {
        let members = "  members: [{url: 'https://127.0.0.1:1'}]\n";
        let cases = [
            (
                format!("{members}  tls: [{{hosts: [a.example.com]}}]\n"),
                "spec.tls[0]: a tls entry names secretName (in a cluster) or certFile and keyFile (standalone): exactly one of them",
            ),
            (
                format!(
                    "{members}  tls: [{{secretName: web-tls, certFile: a.crt, keyFile: a.key}}]\n"
                ),
                "spec.tls[0]: a tls entry names secretName (in a cluster) or certFile and keyFile (standalone): exactly one of them",
            ),
            (
                format!("{members}  tls: [{{certFile: a.crt}}]\n"),
                "spec.tls[0]: certFile and keyFile go together",
            ),
            (
                format!("{members}  tls: [{{hosts: [Shop.Example.com], secretName: web-tls}}]\n"),
                "spec.tls[0].hosts: tls hosts must be lower-case DNS names like shop.example.com, or wildcards like *.example.com",
            ),
            (
                format!("{members}  tls: [{{secretName: Web_TLS}}]\n"),
                "spec.tls[0].secretName: must be the name of a Secret in the cluster's namespace: lower-case letters, digits, - and .",
            ),
            (
                format!(
                    "{members}  tls: [{{secretName: a, default: true}}, {{secretName: b, default: true}}]\n"
                ),
                "spec: at most one spec.tls entry is the default certificate",
            ),
            (
                "  members: [{url: 'http://127.0.0.1:1'}]\n  upstreamTLS: {caSecret: ca}\n"
                    .to_owned(),
                "spec: with spec.upstreamTLS every member is reached over TLS: member urls must start with https://",
            ),
            (
                format!("{members}  upstreamTLS: {{caSecret: ca, caFile: /ca.crt}}\n"),
                "spec.upstreamTLS: upstreamTLS names caSecret (in a cluster) or caFile (standalone), not both",
            ),
            (
                format!("{members}  upstreamTLS: {{clientCertFile: /c.crt}}\n"),
                "spec.upstreamTLS: upstreamTLS.clientCertFile and clientKeyFile go together",
            ),
            (
                format!("{members}  upstreamTLS: {{caSecret: ca, insecureSkipVerify: true}}\n"),
                "spec.upstreamTLS: upstreamTLS.insecureSkipVerify verifies nothing, so a CA has no use with it: leave one of them out",
            ),
            (
                format!("{members}  hsts: {{maxAgeSeconds: 100000000}}\n"),
                "spec.hsts.maxAgeSeconds: hsts.maxAgeSeconds must be between 0 and 63072000 (two years)",
            ),
            (
                "  members: [{url: 'ftp://127.0.0.1:1'}]\n".to_owned(),
                "spec.members[0].url: url must look like http://HOST:PORT or https://HOST:PORT (paths are not supported)",
            ),
        ];
        for (spec, message) in cases {
            assert_eq!(
                refusal(&spec),
                format!("bad.yaml: document 1 (BalancerCluster shop/web): {message}"),
                "{spec}"
            );
        }
    }
}

#[cfg(test)]
mod tls_file_tests {
    use super::*;
    use crate::tls::cert::testing::{ca, leaf_now};
    use std::time::Instant;

    fn serial(plane: &DataPlane) -> Option<String> {
        plane
            .snapshot()
            .tls
            .certificates
            .resolve(Some("shop.example.com"))
            .map(|s| s.certificate.info.serial.clone())
    }

    fn problems(plane: &DataPlane) -> Vec<String> {
        plane
            .snapshot()
            .tls
            .clusters
            .get("shop/web")
            .map(|t| t.problems.iter().map(|p| p.message.clone()).collect())
            .unwrap_or_default()
    }

    /// Waits (at most 2 s, the promise) until `done` holds; returns how long it took.
    async fn within_2s(what: &str, done: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "not within 2 s: {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }

    /// Writes a chain and key the way the kubelet updates a Secret volume: into a new folder,
    /// then a link `..data` swapped to it by rename; `tls.crt` and `tls.key` point through it.
    fn kubelet_write(dir: &Path, generation: u32, chain: &str, key: &str) {
        use std::os::unix::fs::symlink;
        let data = dir.join(format!("..{generation}"));
        std::fs::create_dir(&data).expect("dir");
        std::fs::write(data.join("tls.crt"), chain).expect("write");
        std::fs::write(data.join("tls.key"), key).expect("write");
        let tmp = dir.join("..data_tmp");
        symlink(format!("..{generation}"), &tmp).expect("link");
        std::fs::rename(&tmp, dir.join("..data")).expect("swap");
        for name in ["tls.crt", "tls.key"] {
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).expect("link");
            }
        }
    }

    #[tokio::test]
    async fn certificate_files_are_served_renewed_within_2s_and_a_broken_one_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("secret");
        std::fs::create_dir(&secret).expect("dir");
        let ca = ca("Test CA");
        let first = leaf_now(&ca, &["shop.example.com"], 1);
        kubelet_write(&secret, 1, &first.chain, &first.key);
        let config = dir.path().join("balancer.yaml");
        std::fs::write(
            &config,
            "apiVersion: kubebalancer.io/v1alpha1\nkind: BalancerCluster\nmetadata: {name: web, namespace: shop}\nspec:\n  members: [{url: 'http://127.0.0.1:1'}]\n  tls: [{hosts: [shop.example.com], certFile: secret/tls.crt, keyFile: secret/tls.key}]\n",
        )
        .expect("config");
        let plane = DataPlane::new();
        run(Some(config), plane.clone()).await.expect("served");
        assert_eq!(serial(&plane).as_deref(), Some("01"));
        assert!(problems(&plane).is_empty(), "{:?}", problems(&plane));
        let generation = plane.snapshot().generation;

        // Renewed as the kubelet does it.
        let second = leaf_now(&ca, &["shop.example.com"], 2);
        kubelet_write(&secret, 2, &second.chain, &second.key);
        let took = within_2s("the renewed certificate", || {
            serial(&plane).as_deref() == Some("02")
        })
        .await;
        eprintln!("a renewed certificate file was served after {took:?}");
        assert_eq!(
            plane.snapshot().generation,
            generation + 1,
            "published once"
        );

        // Broken: the key of another certificate. Refused; serial 2 keeps serving.
        let third = leaf_now(&ca, &["shop.example.com"], 3);
        kubelet_write(&secret, 3, &third.chain, &second.key);
        within_2s("the refusal", || !problems(&plane).is_empty()).await;
        assert_eq!(serial(&plane).as_deref(), Some("02"));
        let file = secret.join("tls.crt");
        assert_eq!(
            problems(&plane),
            [format!(
                "file {}: the private key does not belong to the certificate (the first certificate of the chain must be the server's own); the certificate loaded before keeps serving",
                file.display()
            )]
        );

        // Written over in place with the same bytes: nothing to do.
        let generation = plane.snapshot().generation;
        std::fs::write(secret.join("..3/tls.crt"), &third.chain).expect("rewrite");
        // Then mended in place: served.
        std::fs::write(secret.join("..3/tls.key"), &third.key).expect("rewrite");
        within_2s("the mended certificate", || {
            serial(&plane).as_deref() == Some("03")
        })
        .await;
        assert!(problems(&plane).is_empty());
        assert_eq!(
            plane.snapshot().generation,
            generation + 1,
            "published once"
        );
    }
}
