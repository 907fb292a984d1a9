//! The tenant-config API phase (HTTP, JSON).
//!
//! GET `{url}/tenants/{source}/config`, then create `{url}/tenants/{target}/config`
//! with the same body except the fields that hold the tenant's own id, which name the
//! target instead (POST by default, or PUT). A target whose body equals that
//! rewritten body counts as already migrated; a different one follows `onConflict`
//! (Overwrite replaces it with PUT). Move deletes the source config once the
//! target is verified, with `If-Match` naming the ETag of the body it compared when
//! the API gives one: a config rewritten between comparison and delete is refused
//! with 412 (RFC 9110 §13.1.1) and copied again instead. The bearer token is sent,
//! never logged.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{GroupCount, Phase, PhasePlan, Recopied, StepOutcome, StoreFailure, Verified, digest};
use crate::Secret;
use crate::api::{CreateMethod, Mode, OnConflict, Stage, TenantId};

/// Everything the config phase needs, resolved by the engine.
#[derive(Clone, Debug)]
pub struct ConfigSettings {
    pub url: String,
    pub token: Option<Secret>,
    pub source: TenantId,
    pub target: TenantId,
    pub method: CreateMethod,
    pub on_conflict: OnConflict,
    pub mode: Mode,
    /// JSON pointers of the fields holding the tenant id; empty: [`DEFAULT_TENANT_KEYS`].
    pub tenant_fields: Vec<String>,
}

/// Keys whose string value, when it equals the source id, names the tenant itself.
pub const DEFAULT_TENANT_KEYS: [&str; 5] = ["workspace", "workspace_id", "tenant", "tenant_id", "tenantId"];

/// The target's config: `body` with the fields that hold `source` set to `target`.
/// Returns it and the JSON pointers of the fields it changed. With `pointers`, each
/// must exist and hold `source`; without, every [`DEFAULT_TENANT_KEYS`] field that
/// holds `source` changes.
pub fn rewrite_tenant_fields(
    body: &Value,
    source: &str,
    target: &str,
    pointers: &[String],
) -> Result<(Value, Vec<String>), String> {
    let mut out = body.clone();
    if !pointers.is_empty() {
        for p in pointers {
            match out.pointer_mut(p) {
                Some(v) if v.as_str() == Some(source) => *v = Value::from(target),
                Some(v) => {
                    return Err(format!(
                        "config field {p} holds {v}, not the source tenant id {source:?}"
                    ));
                }
                None => return Err(format!("config field {p} does not exist in the source config")),
            }
        }
        return Ok((out, pointers.to_vec()));
    }
    fn walk(v: &mut Value, at: &str, source: &str, target: &str, changed: &mut Vec<String>) {
        let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    let here = format!("{at}/{}", escape(k));
                    if DEFAULT_TENANT_KEYS.contains(&k.as_str()) && child.as_str() == Some(source) {
                        *child = Value::from(target);
                        changed.push(here);
                    } else {
                        walk(child, &here, source, target, changed);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    walk(child, &format!("{at}/{i}"), source, target, changed);
                }
            }
            _ => {}
        }
    }
    let mut changed = Vec::new();
    walk(&mut out, "", source, target, &mut changed);
    Ok((out, changed))
}

/// Errors of the config phase, each naming the request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigStoreError {
    #[error("invalid config API settings: {0}")]
    Settings(String),
    #[error("{method} {url} failed: {source}")]
    Request {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url} was refused with {status}: check the API token")]
    Unauthorized {
        method: Method,
        url: String,
        status: StatusCode,
    },
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url} answered with a body that is not JSON: {detail}")]
    BadBody { url: String, detail: String },
    #[error("source tenant has no config: GET {url} answered 404")]
    SourceMissing { url: String },
    #[error("target tenant already has a different config at {url} (onConflict: Fail)")]
    Conflict { url: String },
    #[error("cannot name the target in its config: {0}")]
    TenantField(String),
    #[error("verification failed: {0}")]
    Mismatch(String),
}

impl StoreFailure for ConfigStoreError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Request { source, .. } => source.is_connect() || source.is_timeout() || source.is_request(),
            Self::Status { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
            _ => false,
        }
    }
}

/// An answer of the config API.
struct Answer {
    status: StatusCode,
    /// The strong entity tag of the body, if the API sent one. A weak tag (`W/"…"`)
    /// is dropped: `If-Match` compares strongly, so it would never match (RFC 9110
    /// §13.1.1) and the removal would be refused forever.
    etag: Option<String>,
    text: String,
}

/// A config as read: its body and its strong ETag.
struct Tagged {
    body: Value,
    etag: Option<String>,
}

/// The config phase of one migration.
pub struct ConfigPhase {
    settings: ConfigSettings,
    http: reqwest::Client,
    source_url: String,
    target_url: String,
    /// The plan saw this migration's earlier work (see `RedisPhase`'s field).
    resuming: bool,
}

impl ConfigPhase {
    pub fn new(settings: ConfigSettings) -> Result<Self, ConfigStoreError> {
        let base = settings.url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base).map_err(|e| ConfigStoreError::Settings(format!("URL {base:?}: {e}")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(ConfigStoreError::Settings(format!(
                "URL {base:?} carries credentials; pass the token through a Secret or TENANT_API_TOKEN"
            )));
        }
        if let Some(p) = settings.tenant_fields.iter().find(|p| !p.starts_with('/')) {
            return Err(ConfigStoreError::Settings(format!(
                "tenant field {p:?} is not a JSON pointer (e.g. /workspace)"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ConfigStoreError::Settings(e.to_string()))?;
        Ok(Self {
            source_url: format!("{base}/tenants/{}/config", settings.source),
            target_url: format!("{base}/tenants/{}/config", settings.target),
            settings,
            http,
            resuming: false,
        })
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, ConfigStoreError> {
        let mut req = self.http.request(method.clone(), url);
        if let Some(t) = &self.settings.token {
            req = req.bearer_auth(t.expose());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(tag) = if_match {
            req = req.header(reqwest::header::IF_MATCH, tag);
        }
        let err = |source| ConfigStoreError::Request {
            method: method.clone(),
            url: url.to_owned(),
            source,
        };
        let resp = req.send().await.map_err(err)?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|t| t.starts_with('"') && t.ends_with('"') && t.len() >= 2)
            .map(str::to_owned);
        let text = resp.text().await.map_err(err)?;
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(ConfigStoreError::Unauthorized {
                method,
                url: url.to_owned(),
                status,
            });
        }
        Ok(Answer { status, etag, text })
    }

    /// GET a tenant's config: `None` on 404.
    async fn get(&self, url: &str) -> Result<Option<Value>, ConfigStoreError> {
        Ok(self.get_tagged(url).await?.map(|t| t.body))
    }

    /// GET a tenant's config with its strong ETag: `None` on 404.
    async fn get_tagged(&self, url: &str) -> Result<Option<Tagged>, ConfigStoreError> {
        let a = self.send(Method::GET, url, None, None).await?;
        match a.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => serde_json::from_str(&a.text)
                .map(|body| Some(Tagged { body, etag: a.etag }))
                .map_err(|e| ConfigStoreError::BadBody {
                    url: url.to_owned(),
                    detail: e.to_string(),
                }),
            s => Err(unexpected(Method::GET, url, s, &a.text)),
        }
    }

    /// Writes `body` to the target with `method`; Ok(false) when the API says it exists.
    async fn write_target(&self, method: Method, body: &Value) -> Result<bool, ConfigStoreError> {
        let a = self.send(method.clone(), &self.target_url, Some(body), None).await?;
        match a.status {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            s => Err(unexpected(method, &self.target_url, s, &a.text)),
        }
    }

    /// Deletes the source config if it is still the one read with `etag` (any, without
    /// one): Ok(false) when the API refused because it changed since (412).
    async fn remove_source(&self, etag: Option<&str>) -> Result<bool, ConfigStoreError> {
        let a = self.send(Method::DELETE, &self.source_url, None, etag).await?;
        match a.status {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(true),
            StatusCode::PRECONDITION_FAILED if etag.is_some() => Ok(false),
            s => Err(unexpected(Method::DELETE, &self.source_url, s, &a.text)),
        }
    }

    /// After the API refused to delete the source config (412: rewritten since it was
    /// read with `etag` and compared as `compared`): copies what it holds now, compared
    /// (and removed) in the next pass; rewritten with the same content, only its ETag
    /// moved on, and the next pass deletes with the new one.
    async fn after_refused_delete(
        &self,
        compared: &Value,
        etag: Option<String>,
        recopied: &mut Vec<Recopied>,
    ) -> Result<(), ConfigStoreError> {
        let Some(now) = self.get_tagged(&self.source_url).await? else {
            return Ok(()); // deleted meanwhile: the next pass finds it gone
        };
        if now.etag == etag {
            // Not a change: an API whose DELETE disagrees with its GET.
            return Err(ConfigStoreError::Status {
                method: Method::DELETE,
                url: self.source_url.clone(),
                status: StatusCode::PRECONDITION_FAILED,
                body: format!(
                    "refused If-Match: {} although GET still answers that ETag",
                    etag.unwrap_or_default()
                ),
            });
        }
        let body = self.expected(&now.body)?.0;
        if &body == compared {
            let tag = now.etag.unwrap_or_default();
            recopied.push(Recopied {
                item: self.source_url.clone(),
                digest: digest(&[body.to_string().as_bytes(), tag.as_bytes()]),
            });
            Ok(())
        } else {
            self.copy_again(&body, recopied).await
        }
    }

    /// Copies the source config to the target again (it changed since it was copied),
    /// noting it for the engine's next pass.
    async fn copy_again(&self, body: &Value, recopied: &mut Vec<Recopied>) -> Result<(), ConfigStoreError> {
        self.write_target(Method::PUT, body).await?;
        recopied.push(Recopied {
            item: self.target_url.clone(),
            digest: digest(&[body.to_string().as_bytes()]),
        });
        Ok(())
    }
}

impl ConfigPhase {
    /// What the target's config must be: the source's, naming the target.
    fn expected(&self, source: &Value) -> Result<(Value, Vec<String>), ConfigStoreError> {
        rewrite_tenant_fields(
            source,
            self.settings.source.as_str(),
            self.settings.target.as_str(),
            &self.settings.tenant_fields,
        )
        .map_err(ConfigStoreError::TenantField)
    }

    /// The target exists (or `None`: vanished): count it as done, skip it, overwrite it or fail.
    /// `source` is the body the target must have.
    async fn resolve(&self, source: &Value, target: Option<&Value>) -> Result<(u64, u64), ConfigStoreError> {
        match target {
            Some(t) if t == source => Ok((1, 0)),
            _ if self.settings.on_conflict == OnConflict::Skip && target.is_some() => Ok((0, 1)),
            // Resumed, a differing target is this migration's copy of a source changed since.
            _ if self.settings.on_conflict == OnConflict::Fail && target.is_some() && !self.resuming => {
                Err(ConfigStoreError::Conflict {
                    url: self.target_url.clone(),
                })
            }
            _ => {
                self.write_target(Method::PUT, source).await?;
                Ok((1, 0))
            }
        }
    }
}

fn unexpected(method: Method, url: &str, status: StatusCode, body: &str) -> ConfigStoreError {
    // A bounded excerpt: the answer ends up in status and Events.
    let mut body = crate::redact::excerpt(body, 200);
    if body.is_empty() {
        body = "(empty body)".into();
    }
    ConfigStoreError::Status {
        method,
        url: url.to_owned(),
        status,
        body,
    }
}

impl Phase for ConfigPhase {
    type Error = ConfigStoreError;

    async fn plan(&mut self, resuming: bool) -> Result<PhasePlan, ConfigStoreError> {
        self.resuming = resuming;
        let tagged = self.get_tagged(&self.source_url).await?;
        let untagged = tagged.as_ref().is_some_and(|t| t.etag.is_none());
        let source = tagged.map(|t| t.body);
        let target = self.get(&self.target_url).await?;
        let mut plan = PhasePlan::default();
        match (&source, &target) {
            (None, None) => {
                return Err(ConfigStoreError::SourceMissing {
                    url: self.source_url.clone(),
                });
            }
            (None, Some(_)) if resuming => {
                plan.notes
                    .push("source config already removed by this migration".into());
            }
            (None, Some(_)) => {
                return Err(ConfigStoreError::SourceMissing {
                    url: self.source_url.clone(),
                });
            }
            (Some(_), None) => plan.total = 1,
            (Some(s), Some(t)) => {
                plan.total = 1;
                if &self.expected(s)?.0 == t {
                    plan.identical = 1;
                } else if resuming && self.settings.on_conflict == OnConflict::Fail {
                    // This migration's copy of a source config changed since: copied again.
                    plan.notes
                        .push("the source config changed since this migration copied it: copied again".into());
                } else {
                    plan.conflicts = 1;
                    plan.conflict_examples.push(self.target_url.clone());
                    if self.settings.on_conflict == OnConflict::Fail {
                        return Err(ConfigStoreError::Conflict {
                            url: self.target_url.clone(),
                        });
                    }
                }
            }
        }
        if untagged && self.settings.mode == Mode::Move {
            plan.notes.push(
                "the config API sends no strong ETag: a write to the source config between its last comparison and \
                 its removal cannot be refused (quiesce its writers)"
                    .into(),
            );
        }
        if let Some(s) = &source {
            let (_, changed) = self.expected(s)?;
            plan.notes.push(if changed.is_empty() {
                "no config field holds the source tenant id; the body is copied as it is".into()
            } else {
                format!("fields set to the target tenant id: {}", changed.join(", "))
            });
        }
        plan.groups.push(GroupCount {
            name: "config".into(),
            source: plan.total,
            target: u64::from(target.is_some()),
            extra: u64::from(source.is_none() && target.is_some()),
        });
        plan.extra = plan.groups[0].extra;
        Ok(plan)
    }

    async fn step(&mut self, stage: Stage, _cursor: &str, _plan: &PhasePlan) -> Result<StepOutcome, ConfigStoreError> {
        let (source, etag) = match self.get_tagged(&self.source_url).await? {
            Some(t) => (Some(self.expected(&t.body)?.0), t.etag),
            None => (None, None),
        };
        let target = self.get(&self.target_url).await?;
        // `source` is from here on the body the target must have.
        let skip = self.settings.on_conflict == OnConflict::Skip;
        let mut recopied = Vec::new();
        let (done, skipped) = match (stage, source, target) {
            // Resumed after the source was removed: nothing left to do.
            (_, None, Some(_)) => (1, 0),
            (_, None, None) => {
                return Err(ConfigStoreError::SourceMissing {
                    url: self.source_url.clone(),
                });
            }
            (Stage::Copy, Some(s), None) => {
                let method = match self.settings.method {
                    CreateMethod::Post => Method::POST,
                    CreateMethod::Put => Method::PUT,
                };
                if self.write_target(method, &s).await? {
                    (1, 0)
                } else {
                    // Created by someone else between our GET and create.
                    let t = self.get(&self.target_url).await?;
                    self.resolve(&s, t.as_ref()).await?
                }
            }
            (Stage::Copy, Some(s), Some(t)) => self.resolve(&s, Some(&t)).await?,
            (Stage::Verify, Some(s), Some(t)) if s == t => (1, 0),
            (Stage::RemoveSource, Some(s), Some(t)) if s == t => {
                if self.remove_source(etag.as_deref()).await? {
                    (1, 0)
                } else {
                    self.after_refused_delete(&s, etag, &mut recopied).await?;
                    (0, 0)
                }
            }
            // Skip kept the target's own config: the source's is never destroyed.
            (Stage::Verify | Stage::RemoveSource, Some(_), Some(_)) if skip => (0, 1),
            // The source changed since it was copied (or the target vanished): copy it
            // again; it is compared (and removed) in the next pass.
            (Stage::Verify | Stage::RemoveSource, Some(s), _) => {
                self.copy_again(&s, &mut recopied).await?;
                (0, 0)
            }
            (other, ..) => {
                return Err(ConfigStoreError::Settings(format!("stage {other:?} has no batches")));
            }
        };
        Ok(StepOutcome {
            next: None,
            done,
            skipped,
            group: None,
            recopied,
        })
    }

    async fn verify(&mut self, plan: &PhasePlan, removed: bool) -> Result<Verified, ConfigStoreError> {
        // Compared with the body the target must have.
        let source = match self.get(&self.source_url).await? {
            Some(s) => Some(self.expected(&s)?.0),
            None => None,
        };
        let target = self.get(&self.target_url).await?;
        let kept_by_skip = plan.conflicts > 0 && self.settings.on_conflict == OnConflict::Skip;
        let ok = match (&source, &target) {
            (_, None) => false,
            (Some(s), Some(t)) if removed => kept_by_skip && s != t,
            (Some(s), Some(t)) => s == t || kept_by_skip,
            (None, Some(_)) => removed || plan.total == 0,
        };
        if !ok {
            return Err(ConfigStoreError::Mismatch(format!(
                "after {}: source config {}, target config {}",
                if removed { "removal" } else { "copy" },
                if source.is_some() { "present" } else { "absent" },
                match (&source, &target) {
                    (_, None) => "absent",
                    (Some(s), Some(t)) if s != t => "differs from the source's (with the target's id)",
                    _ => "present",
                }
            )));
        }
        Ok(Verified {
            source_left: u64::from(source.is_some()),
            target: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_tenants_own_id_is_rewritten_and_nothing_else() {
        let body = json!({
            "workspace": "siraya",
            "llm": {"model": "siraya", "tenant_id": "siraya"},
            "aliases": [{"tenant": "siraya"}, {"tenant": "siraya_old"}],
            "title": "siraya's workspace",
            "a/b": {"workspace": "siraya"}
        });
        let (out, changed) = rewrite_tenant_fields(&body, "siraya", "t2", &[]).expect("rewrite");
        assert_eq!(
            out,
            json!({
                "workspace": "t2",
                "llm": {"model": "siraya", "tenant_id": "t2"},
                "aliases": [{"tenant": "t2"}, {"tenant": "siraya_old"}],
                "title": "siraya's workspace",
                "a/b": {"workspace": "t2"}
            })
        );
        let mut changed = changed;
        changed.sort();
        assert_eq!(
            changed,
            ["/aliases/0/tenant", "/a~1b/workspace", "/llm/tenant_id", "/workspace"]
        );
    }

    #[test]
    fn listed_fields_must_hold_the_source_id() {
        let body = json!({"storage": {"ns": "siraya"}, "workspace": "siraya"});
        let pointers = ["/storage/ns".to_owned()];
        let (out, changed) = rewrite_tenant_fields(&body, "siraya", "t2", &pointers).expect("rewrite");
        // Only the listed field: the list replaces the default keys.
        assert_eq!(out, json!({"storage": {"ns": "t2"}, "workspace": "siraya"}));
        assert_eq!(changed, pointers);
        let missing = rewrite_tenant_fields(&body, "siraya", "t2", &["/nope".to_owned()]).unwrap_err();
        assert!(missing.contains("/nope does not exist"), "{missing}");
        let other = rewrite_tenant_fields(&body, "other", "t2", &pointers).unwrap_err();
        assert!(
            other.contains("holds \"siraya\", not the source tenant id \"other\""),
            "{other}"
        );
    }
}
