//! The platform's calls: packages, deploys and the rest of an app's life.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use enjin_model::api::{
    AppList, AppStatus, DeployRequest, LogsQuery, LogsReply, PackageUploaded, ReleaseList, RollbackRequest,
    RolloutStarted, ScaleRequest, VERSION,
};
use reqwest::Method;

use crate::{Client, ClientError};

/// How long an upload may take in all (packages are at most 512 MiB).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// The piece of a package sent between progress reports.
const UPLOAD_PIECE: usize = 64 * 1024;

/// Called with the bytes sent so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

impl Client {
    /// Upload a package (tar + zstd, at most 512 MiB) to the package store for `account`
    /// (default: the caller's own), reporting progress as bytes go out.
    pub async fn upload_package(
        &self,
        bytes: Vec<u8>,
        account: Option<uuid::Uuid>,
        progress: Progress,
    ) -> Result<PackageUploaded, ClientError> {
        let path = match account {
            Some(a) => format!("/{VERSION}/packages?account={a}"),
            None => format!("/{VERSION}/packages"),
        };
        let bytes = bytes::Bytes::from(bytes);
        let total = bytes.len();
        let pieces = (0..total.div_ceil(UPLOAD_PIECE)).map(move |i| {
            let end = ((i + 1) * UPLOAD_PIECE).min(total);
            progress(end as u64);
            Ok::<_, std::io::Error>(bytes.slice(i * UPLOAD_PIECE..end))
        });
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
        let rb = self
            .request(Method::POST, &path)
            .timeout(UPLOAD_TIMEOUT)
            .header("Content-Type", "application/zstd")
            .header("Content-Length", total.to_string())
            .body(body);
        self.send(rb, &path).await
    }

    /// Deploys a new release of the app named `app` from an uploaded package (the first deploy
    /// makes the app). Returns at once with the rollout task that starts it beside the live one.
    pub async fn deploy(&self, app: &str, req: &DeployRequest) -> Result<RolloutStarted, ClientError> {
        let path = format!("/{VERSION}/apps/{app}/deploys");
        self.send(self.request(Method::POST, &path).json(req), &path).await
    }

    /// Deploys an earlier release's code and configuration again, as a new release: release
    /// `version`, or the one before the live one if `None`.
    pub async fn rollback(&self, app: &str, version: Option<u32>) -> Result<RolloutStarted, ClientError> {
        let path = format!("/{VERSION}/apps/{app}/rollback");
        self.send(self.request(Method::POST, &path).json(&RollbackRequest { version }), &path).await
    }

    /// Replaces every instance of `app`'s live release, without downtime, by a rollout.
    pub async fn restart(&self, app: &str) -> Result<RolloutStarted, ClientError> {
        let path = format!("/{VERSION}/apps/{app}/restart");
        self.send(self.request(Method::POST, &path), &path).await
    }

    /// Sets the instance counts of the live release's process types named in `processes`; those
    /// not named keep theirs, and a name the release has not is refused (422).
    pub async fn scale(
        &self,
        app: &str,
        processes: BTreeMap<String, u32>,
    ) -> Result<RolloutStarted, ClientError> {
        let path = format!("/{VERSION}/apps/{app}/scale");
        self.send(self.request(Method::POST, &path).json(&ScaleRequest { processes }), &path).await
    }

    /// Every app the caller may list, with its live release and instances.
    pub async fn apps(&self) -> Result<AppList, ClientError> {
        let path = format!("/{VERSION}/apps");
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// The app named `app`: its live release, its instances (health, host, address, CPU,
    /// memory) and its traffic as the routers last reported it.
    pub async fn app(&self, app: &str) -> Result<AppStatus, ClientError> {
        let path = format!("/{VERSION}/apps/{app}");
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// `app`'s releases, newest first.
    pub async fn releases(&self, app: &str) -> Result<ReleaseList, ClientError> {
        let path = format!("/{VERSION}/apps/{app}/releases");
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// Lines `app`'s instances wrote, with times and instance ids, fetched from the hosts that
    /// run them and filtered by `q` (by default the newest 1000 per instance).
    pub async fn logs(&self, app: &str, q: &LogsQuery) -> Result<LogsReply, ClientError> {
        let path = format!("/{VERSION}/apps/{app}/logs");
        self.send(self.request(Method::GET, &path).query(q), &path).await
    }
}
