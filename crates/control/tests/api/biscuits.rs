//! Attenuated tokens: a holder narrows its token offline, the server runs the narrowing's checks
//! on every request on top of the permissions, and a narrowed token never holds more than its
//! root. Forged, re-signed, cut and reordered biscuits are refused with 401.

use std::time::Duration;

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{Biscuit, UnverifiedBiscuit};
use chrono::Utc;
use enjin_control::biscuits::{BISCUIT_MARK, Restriction, TokenKey, attenuate};
use enjin_model::kinds::Verb;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::{account, membership};
use crate::harness::{Reply, TestServer, assert_problem_status, call, uuid_of};

/// The status of `GET path` with `token`.
async fn get(s: &TestServer, token: &str, path: &str) -> Reply {
    call(s, token, Method::GET, path, None).await
}

/// A reply that neither authentication nor authorization refused: the handler ran.
fn passed(r: &Reply, what: &str) {
    assert!(
        r.status != StatusCode::UNAUTHORIZED && r.status != StatusCode::FORBIDDEN,
        "{what}: {} {}",
        r.status,
        r.body
    );
}

fn refused_by_attenuation(r: &Reply, what: &str) {
    assert_problem_status(r, 403);
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("attenuation"), "{what}: {detail}");
}

fn narrow(verbs: &[Verb], app: Option<&str>, expires_in: Option<i64>) -> Restriction {
    Restriction {
        verbs: verbs.to_vec(),
        app: app.map(str::to_string),
        expires_at: expires_in.map(|s| Utc::now() + chrono::TimeDelta::seconds(s)),
        checks: Vec::new(),
    }
}

/// A token for `principal` issued by the admin: (opaque secret, root biscuit, id).
async fn issue(s: &TestServer, body: Value) -> (String, String, String) {
    let r = s.post("/v1/tokens", &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let field = |k: &str| r.body[k].as_str().unwrap_or_else(|| panic!("{k} in {}", r.body)).to_string();
    let biscuit = field("biscuit");
    assert!(biscuit.starts_with(BISCUIT_MARK), "{biscuit}");
    (field("token"), biscuit, field("id"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_guest_reads_one_apps_logs_for_ten_minutes_and_nothing_else() {
    let s = TestServer::start().await;
    let (_, root, _) = issue(&s, json!({"principal": "admin", "description": "backups"})).await;
    // The root biscuit is the token: it works wherever the opaque one does.
    assert_eq!(get(&s, &root, "/v1/nodes").await.status, StatusCode::OK);

    let guest = attenuate(&root, &narrow(&[Verb::Get], Some("shop"), Some(600))).expect("attenuate");
    for path in ["/v1/apps/shop/logs", "/v1/apps/shop"] {
        passed(&get(&s, &guest, path).await, path);
    }
    for path in ["/v1/apps/blog/logs", "/v1/apps/blog", "/v1/nodes", "/v1/apps", "/v1/tokens"] {
        refused_by_attenuation(&get(&s, &guest, path).await, path);
    }
    let change = [
        ("/v1/apps/shop/deploys", json!({"manifest": {}, "package": {}})),
        ("/v1/apps/shop/scale", json!({"processes": {"web": 3}})),
        ("/v1/apps/shop/restart", json!({})),
        ("/v1/apps/shop/rollback", json!({})),
    ];
    for (path, body) in &change {
        refused_by_attenuation(&call(&s, &guest, Method::POST, path, Some(body)).await, path);
    }
    // A biscuit mints nothing: a new token would not carry its checks.
    let wide = attenuate(&root, &narrow(&[], None, Some(600))).expect("attenuate");
    let r = call(&s, &wide, Method::POST, "/v1/tokens", Some(&json!({"principal": "admin"}))).await;
    assert_problem_status(&r, 403);
    assert!(r.body["detail"].as_str().unwrap_or_default().contains("cannot issue tokens"), "{}", r.body);

    // Narrowed to a second or two: works, then stops.
    let brief = attenuate(&root, &narrow(&[Verb::Get, Verb::List], None, Some(2))).expect("attenuate");
    assert_eq!(get(&s, &brief, "/v1/nodes").await.status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&s, &brief, "/v1/nodes").await;
        if r.status != StatusCode::OK {
            // Expired is unauthenticated, not forbidden: the biscuit is no credential now.
            assert_problem_status(&r, 401);
            let detail = r.body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("expired") && detail.contains("time"), "{}", r.body);
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(tokio::time::Instant::now() < deadline, "the narrowed token never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}

/// Base64url with padding, as biscuits are written.
fn base64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_cut_reordered_and_tampered_biscuits_are_refused() {
    let s = TestServer::start().await;
    let (_, root, id) = issue(&s, json!({"principal": "admin"})).await;
    let key = s.auth.token_public_key();

    // The same authority block signed by another key.
    let forged = TokenKey::generate().mint(id.parse().expect("uuid")).expect("mint");
    assert_problem_status(&get(&s, &forged, "/v1/nodes").await, 401);

    let one = attenuate(&root, &narrow(&[Verb::Get, Verb::List], None, None)).expect("attenuate");
    let two = attenuate(&one, &narrow(&[Verb::List], None, Some(600))).expect("attenuate");
    let parsed = Biscuit::from_base64(&two[BISCUIT_MARK.len()..], key).expect("verifies");
    let container = parsed.container().clone();
    let encode = |c: &biscuit_auth::format::SerializedBiscuit| {
        format!("{BISCUIT_MARK}{}", base64url(&c.to_vec().expect("serialize")))
    };
    // Re-encoding the untouched container works: the encoder is right.
    assert_eq!(get(&s, &encode(&container), "/v1/nodes").await.status, StatusCode::OK);

    let mut cut = container.clone();
    cut.blocks.remove(0);
    assert_problem_status(&get(&s, &encode(&cut), "/v1/nodes").await, 401);
    let mut swapped = container.clone();
    swapped.blocks.swap(0, 1);
    assert_problem_status(&get(&s, &encode(&swapped), "/v1/nodes").await, 401);
    let mut dropped = container.clone();
    dropped.blocks.clear();
    assert_problem_status(&get(&s, &encode(&dropped), "/v1/nodes").await, 401);

    let bytes = container.to_vec().expect("serialize");
    for at in [8, bytes.len() / 3, bytes.len() / 2, bytes.len() - 8] {
        let mut b = bytes.clone();
        b[at] ^= 0x55;
        let r = get(&s, &format!("{BISCUIT_MARK}{}", base64url(&b)), "/v1/nodes").await;
        assert_problem_status(&r, 401);
    }
    for junk in ["enjinb_", "enjinb_!!!!", "enjinb_AAAA", "enjinb_====", &format!("{root}x")] {
        assert_problem_status(&get(&s, junk, "/v1/nodes").await, 401);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_the_root_kills_derived_tokens_and_revoking_a_derived_one_spares_its_parent() {
    let s = TestServer::start().await;
    let (opaque, root, id) = issue(&s, json!({"principal": "admin"})).await;
    let parent = attenuate(&root, &narrow(&[Verb::Get, Verb::List], None, None)).expect("attenuate");
    let child = attenuate(&parent, &narrow(&[Verb::List], None, None)).expect("attenuate");
    let sibling = attenuate(&root, &narrow(&[Verb::List], None, None)).expect("attenuate");
    for t in [&root, &parent, &child, &sibling] {
        assert_eq!(get(&s, t, "/v1/nodes").await.status, StatusCode::OK);
    }

    // Revoking `parent` kills it and its child, not the root nor a sibling.
    let r = s.post("/v1/tokens/revoke-derived", &json!({"biscuit": parent})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for t in [&parent, &child] {
        let r = get(&s, t, "/v1/nodes").await;
        assert_problem_status(&r, 401);
        assert!(r.body["detail"].as_str().unwrap_or_default().contains("revoked"), "{}", r.body);
    }
    for t in [&root, &sibling, &opaque] {
        assert_eq!(get(&s, t, "/v1/nodes").await.status, StatusCode::OK);
    }
    // A biscuit revokes itself with nothing but itself, even one that may only read.
    let r = call(&s, &sibling, Method::POST, "/v1/tokens/revoke-derived", Some(&json!({"biscuit": sibling})))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_problem_status(&get(&s, &sibling, "/v1/nodes").await, 401);
    // Bytes that are not our biscuit: 422 naming the field.
    let r = s.post("/v1/tokens/revoke-derived", &json!({"biscuit": "enjinb_AAAA"})).await;
    assert_problem_status(&r, 422);
    assert_eq!(r.body["field"], "biscuit");

    // Revoking the root token kills every biscuit derived from it.
    let other = attenuate(&root, &narrow(&[Verb::Get, Verb::List], None, None)).expect("attenuate");
    assert_eq!(get(&s, &other, "/v1/nodes").await.status, StatusCode::OK);
    assert_eq!(s.delete(&format!("/v1/tokens/{id}")).await.status, StatusCode::NO_CONTENT);
    for t in [&root, &other, &opaque] {
        assert_problem_status(&get(&s, t, "/v1/nodes").await, 401);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attenuation_never_widens() {
    let s = TestServer::start().await;
    let acme = s.create_id("accounts", account("acme")).await;
    let (roles, _) = s.list("roles", &[("label", "admin")]).await;
    s.create("memberships", membership("acme-admin", &acme, &uuid_of(&roles[0]))).await;
    let (viewers, _) = s.list("roles", &[("label", "viewer")]).await;
    let viewer = uuid_of(&viewers[0]);
    let (_, root, _) = issue(&s, json!({"principal": "acme-admin", "account": acme, "role": viewer})).await;
    let (_, _, admin_id) = issue(&s, json!({"principal": "admin"})).await;

    // A block with no checks at all, that also names the operator's token and claims rights.
    let bare = UnverifiedBiscuit::from_base64(&root[BISCUIT_MARK.len()..]).expect("parse");
    let block = BlockBuilder::new()
        .code(format!(r#"token("{admin_id}"); operation("create"); right("*", "*");"#))
        .expect("block");
    let derived =
        format!("{BISCUIT_MARK}{}", bare.append(block).expect("append").to_base64().expect("encode"));
    assert_eq!(get(&s, &derived, "/v1/tiers").await.status, StatusCode::OK, "reads as the viewer does");
    let tier = json!({"ring": 2, "label": "t", "spec": {}});
    for t in [&root, &derived] {
        let r = call(&s, t, Method::POST, "/v1/tiers", Some(&tier)).await;
        assert_problem_status(&r, 403);
        assert!(!r.body["detail"].as_str().unwrap_or_default().contains("attenuation"), "{}", r.body);
    }
    assert_problem_status(&get(&s, &derived, "/v1/audit").await, 403);
    // Nor can a guest of acme revoke the operator's biscuits.
    let (_, admin_root, _) = issue(&s, json!({"principal": "admin"})).await;
    let r =
        call(&s, &derived, Method::POST, "/v1/tokens/revoke-derived", Some(&json!({"biscuit": admin_root})))
            .await;
    assert!(matches!(r.status.as_u16(), 403 | 404), "{} {}", r.status, r.body);
    assert_eq!(get(&s, &admin_root, "/v1/nodes").await.status, StatusCode::OK);
    s.stop().await;
}

/// How many biscuit revocations the store holds.
async fn revocations(s: &TestServer) -> usize {
    use enjin_store::Store;
    s.store().range("/auth/revoked/").await.expect("read the revocations").kvs.len()
}

fn refused_as_revoked(r: &Reply, what: &str) {
    assert_problem_status(r, 401);
    assert!(r.body["detail"].as_str().unwrap_or_default().contains("revoked"), "{what}: {}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_are_forgotten_once_their_root_token_has_expired_and_only_then() {
    let s = TestServer::start().await;
    let (_, brief, _) = issue(&s, json!({"principal": "admin", "expires_in_seconds": 60})).await;
    let (_, daily, _) = issue(&s, json!({"principal": "admin", "expires_in_seconds": 86_400})).await;
    let (_, forever, _) = issue(&s, json!({"principal": "admin"})).await;
    let derive =
        |root: &str| attenuate(root, &narrow(&[Verb::Get, Verb::List], None, None)).expect("attenuate");
    let (brief, daily, forever) = (derive(&brief), derive(&daily), derive(&forever));
    for b in [&brief, &daily, &forever] {
        let r = s.post("/v1/tokens/revoke-derived", &json!({"biscuit": b})).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
    assert_eq!(revocations(&s).await, 3, "nothing has expired yet: revoking pruned nothing");

    // Two hours on, the brief token has been expired for over an hour: its biscuits are refused
    // as expired whatever their ids, so the revocation goes.
    let later = Utc::now() + chrono::TimeDelta::hours(2);
    assert_eq!(s.auth.prune_revocations(later).await.expect("prune"), 1);
    assert_eq!(revocations(&s).await, 2);
    for (b, what) in [(&daily, "daily"), (&forever, "forever")] {
        refused_as_revoked(&get(&s, b, "/v1/nodes").await, what);
    }

    // A century on, the daily token's goes too; a token that never expires keeps its
    // revocation for good.
    let much_later = Utc::now() + chrono::TimeDelta::days(36_500);
    assert_eq!(s.auth.prune_revocations(much_later).await.expect("prune"), 1);
    assert_eq!(revocations(&s).await, 1);
    refused_as_revoked(&get(&s, &forever, "/v1/nodes").await, "forever");
    s.stop().await;
}
