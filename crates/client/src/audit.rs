//! The audit log.

use enjin_model::api::{AuditList, AuditQuery, VERSION};
use reqwest::Method;

use crate::{Client, ClientError};

impl Client {
    /// Audit records matching `q`, newest first.
    pub async fn audit(&self, q: &AuditQuery) -> Result<AuditList, ClientError> {
        let path = format!("/{VERSION}/audit");
        self.send(self.request(Method::GET, &path).query(q), &path).await
    }
}
