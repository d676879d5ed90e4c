//! The registrar (RFC 3261 §10): digest authentication, then bindings added, refreshed,
//! removed or fetched, published on the bus so every worker knows where every phone is.

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use sipcraft_config::{Config, Extension};
use sipcraft_ipc::child::Outbox;
use sipcraft_ipc::state::{Binding, Replica, Update};
use sipcraft_sip::build::ResponseBuilder;
use sipcraft_sip::header::{Contacts, NameAddr};
use sipcraft_sip::{Message, Uri};

use crate::auth::{Credentials, DigestAuth, NonceKey, Verdict};
use crate::security::Guard;
use crate::transport::Target;

/// What authentication needs from the worker besides the message.
pub struct AuthContext<'c> {
    pub from: &'c Target,
    pub replica: &'c Arc<RwLock<Replica>>,
    pub outbox: &'c Outbox,
    pub guard: &'c mut Guard,
    pub now: Instant,
}

/// Registrar settings and per-worker authentication state.
pub struct Registrar {
    auth: DigestAuth,
    realm: String,
    registrar: sipcraft_config::Registrar,
    /// Whether the last [`Registrar::register`] changed a binding.
    changed: std::cell::Cell<bool>,
}

impl Registrar {
    /// `secret` is the instance secret every worker shares, so any worker verifies a nonce
    /// another one issued.
    pub fn new(secret: &[u8], config: &Config) -> Self {
        let key = NonceKey::new(secret).unwrap_or_else(|e| {
            tracing::error!(error = %e, "unusable instance secret; using a per-worker nonce key");
            NonceKey::random().expect("the OS provides randomness")
        });
        Registrar {
            auth: DigestAuth::new(key, &config.registrar),
            realm: config.server.domain.clone(),
            registrar: config.registrar.clone(),
            changed: Default::default(),
        }
    }

    /// The realm every challenge names: the SIP domain.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn reload(&mut self, config: &Config) {
        self.registrar = config.registrar.clone();
        self.auth.reconfigure(&config.registrar);
    }

    /// Handles a REGISTER; returns the response bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        msg: &Message<'_>,
        from: &Target,
        worker: &str,
        replica: &Arc<RwLock<Replica>>,
        outbox: &Outbox,
        guard: &mut Guard,
        now: Instant,
    ) -> Vec<u8> {
        self.changed.set(false);
        let Ok(to) = msg.to() else {
            return bad(msg, "Bad To header");
        };
        let Some(user) = aor_user(&to) else {
            return ResponseBuilder::new(msg, 404, "Not Found").build();
        };
        let ctx = AuthContext {
            from,
            replica,
            outbox,
            guard,
            now,
        };
        match self.authenticate(msg, &user, false, ctx) {
            Ok(number) => self.update_bindings(msg, from, worker, &number, replica, outbox),
            Err(response) => response,
        }
    }

    /// Digest authentication of `msg` as extension `user` (the To user of a REGISTER, the
    /// From user of a call). `proxy` selects 407/Proxy-Authenticate/Proxy-Authorization
    /// instead of 401/WWW-Authenticate/Authorization. Unknown users get exactly what a
    /// known user with a wrong password gets. `Ok` holds the extension number; `Err` the
    /// response to send.
    pub fn authenticate(
        &mut self,
        msg: &Message<'_>,
        user: &str,
        proxy: bool,
        ctx: AuthContext<'_>,
    ) -> Result<String, Vec<u8>> {
        // The replica stays read-locked while the digest is checked (microseconds), so the
        // extension is not copied. Nothing below takes the replica lock again.
        let replica = read(ctx.replica);
        let extension = replica.extension(user);
        let method = msg.method().map(|m| m.as_str()).unwrap_or("REGISTER");
        let digest = msg
            .digest_credentials(proxy)
            .filter_map(|d| d.ok().flatten())
            .find(|d| d.realm.as_deref() == Some(self.realm.as_str()));
        let Some(digest) = digest else {
            return Err(self.challenge(msg, extension, false, proxy));
        };
        let creds = Credentials {
            username: digest.username.as_deref().unwrap_or_default(),
            realm: digest.realm.as_deref().unwrap_or_default(),
            nonce: digest.nonce.as_deref().unwrap_or_default(),
            uri: digest.uri.as_deref().unwrap_or_default(),
            response: digest.response.as_deref().unwrap_or_default(),
            algorithm: digest.algorithm.as_deref(),
            cnonce: digest.cnonce.as_deref(),
            qop: digest.qop.as_deref(),
            nc: digest.nc.as_deref(),
            opaque: digest.opaque.as_deref(),
        };
        let wall = SystemTime::now();
        // Credentials must be for the user in question: 1001 cannot register or call as 1002.
        let verdict = match extension {
            Some(ext) if creds.username == ext.number => {
                self.auth.verify(&creds, method, ext, &self.realm, wall)
            }
            _ => self.auth.verify_unknown(&creds, method, &self.realm, wall),
        };
        if verdict.counts_as_failure() {
            let ip = ctx.from.peer.ip();
            tracing::warn!(
                "sipcraft auth failure: ip={ip} user={} reason={}",
                sanitize(creds.username),
                verdict.as_str()
            );
            if let Some(ban) = ctx.guard.record_failure(ip, creds.username, ctx.now) {
                tracing::warn!("{}", ban.log_line());
                crate::core::share_ban(ctx.outbox, &ban);
            }
        }
        match verdict {
            Verdict::Ok { .. } => {}
            Verdict::Stale | Verdict::Replay => {
                return Err(self.challenge(msg, extension, true, proxy))
            }
            Verdict::Disabled => return Err(ResponseBuilder::new(msg, 403, "Forbidden").build()),
            Verdict::Unsupported(why) => return Err(bad(msg, &why.to_string())),
            Verdict::Malformed(why) => return Err(bad(msg, &why.to_string())),
            _ => return Err(self.challenge(msg, extension, false, proxy)),
        }
        extension
            .map(|ext| ext.number.clone())
            .ok_or_else(|| self.challenge(msg, None, false, proxy))
    }

    fn challenge(
        &self,
        msg: &Message<'_>,
        extension: Option<&Extension>,
        stale: bool,
        proxy: bool,
    ) -> Vec<u8> {
        let values = self
            .auth
            .challenges_for(extension, &self.realm, stale, SystemTime::now());
        if values.is_empty() {
            // An extension whose secret answers none of its algorithms (config check stops it).
            return ResponseBuilder::new(msg, 403, "Forbidden").build();
        }
        let (mut b, header) = match proxy {
            true => (
                ResponseBuilder::new(msg, 407, "Proxy Authentication Required"),
                "Proxy-Authenticate",
            ),
            false => (
                ResponseBuilder::new(msg, 401, "Unauthorized"),
                "WWW-Authenticate",
            ),
        };
        for value in values {
            b = b.header(header, &value);
        }
        b.build()
    }

    /// Whether the last REGISTER answered changed a binding (added, refreshed, removed).
    pub fn changed(&self) -> bool {
        self.changed.get()
    }

    /// RFC 3261 §10.3 steps 6–8, after authentication.
    fn update_bindings(
        &self,
        msg: &Message<'_>,
        from: &Target,
        worker: &str,
        number: &str,
        replica: &Arc<RwLock<Replica>>,
        outbox: &Outbox,
    ) -> Vec<u8> {
        let Ok(call_id) = msg.call_id() else {
            return bad(msg, "Bad Call-ID");
        };
        let Ok(cseq) = msg.cseq() else {
            return bad(msg, "Bad CSeq");
        };
        let header_expires = match msg.expires() {
            Ok(e) => e,
            Err(_) => return bad(msg, "Bad Expires header"),
        };
        let contacts = match msg.contacts() {
            Ok(c) => c,
            Err(_) => return bad(msg, "Bad Contact header"),
        };
        let now_ms = crate::now_ms();
        let aor = number.to_owned();
        let mut updates = Vec::new();
        // Changes to bindings that stay good for a while: published lazily (see
        // `Outbox::publish_lazy`).
        let mut renewals = Vec::new();
        match contacts {
            Contacts::Wildcard => {
                if header_expires != Some(0) {
                    return bad(msg, "Contact: * requires Expires: 0");
                }
                let r = read(replica);
                for b in r.bindings(&aor, now_ms) {
                    if b.call_id == call_id && cseq.seq <= b.cseq {
                        return ResponseBuilder::new(msg, 500, "Out of order CSeq").build();
                    }
                }
                updates.push(Update::BindingsCleared { aor: aor.clone() });
            }
            Contacts::List(list) => {
                let existing: Vec<Binding> = read(replica)
                    .bindings(&aor, now_ms)
                    .map(Binding::from)
                    .collect();
                let mut live = existing.len();
                for contact in &list {
                    let expires = contact
                        .expires()
                        .or(header_expires)
                        .unwrap_or(self.registrar.default_expires);
                    if expires != 0 && expires < self.registrar.min_expires {
                        return ResponseBuilder::new(msg, 423, "Interval Too Brief")
                            .header("Min-Expires", &self.registrar.min_expires.to_string())
                            .build();
                    }
                    let expires = expires.min(self.registrar.max_expires);
                    let key = binding_key(contact);
                    let old = existing.iter().find(|b| b.key == key);
                    if let Some(old) = old {
                        if old.call_id == call_id && cseq.seq <= old.cseq {
                            return ResponseBuilder::new(msg, 500, "Out of order CSeq").build();
                        }
                    }
                    if expires == 0 {
                        if old.is_some() {
                            live -= 1;
                            updates.push(Update::BindingRemoved {
                                aor: aor.clone(),
                                key,
                            });
                        }
                        continue;
                    }
                    if old.is_none() {
                        live += 1;
                    }
                    let binding = Binding {
                        aor: aor.clone(),
                        key,
                        contact: uri_text(contact),
                        source: from.peer,
                        transport: from.transport,
                        owner: worker.to_owned(),
                        connection: from.conn,
                        instance: contact.instance().map(str::to_owned),
                        reg_id: contact.reg_id(),
                        user_agent: msg.user_agent().map(|s| s.chars().take(128).collect()),
                        call_id: call_id.to_owned(),
                        cseq: cseq.seq,
                        q: contact.q(),
                        expires_at_ms: now_ms + u64::from(expires) * 1000,
                    };
                    // A change to a binding that stays good for a while yet may travel
                    // lazily: until it arrives, other workers route by the old one.
                    if old.is_some_and(|o| o.expires_at_ms > now_ms + RENEW_MARGIN_MS) {
                        renewals.push(Update::BindingUpserted(binding));
                    } else {
                        updates.push(Update::BindingUpserted(binding));
                    }
                }
                // Too many contacts: the ones closest to expiry make room.
                let max = self.registrar.max_contacts_per_aor as usize;
                if live > max {
                    let mut oldest: Vec<&Binding> = existing.iter().collect();
                    oldest.sort_by_key(|b| b.expires_at_ms);
                    for b in oldest.into_iter().take(live - max) {
                        if !updates
                            .iter()
                            .chain(&renewals)
                            .any(|u| matches!(u, Update::BindingUpserted(n) if n.key == b.key))
                        {
                            updates.push(Update::BindingRemoved {
                                aor: aor.clone(),
                                key: b.key.clone(),
                            });
                        }
                    }
                }
            }
        }
        {
            let mut r = replica.write().unwrap_or_else(|p| p.into_inner());
            for u in renewals.iter().chain(&updates) {
                r.apply_local(u);
            }
        }
        // Renewals first: the outbox keeps order, so the urgent changes after them take
        // them along.
        self.changed
            .set(!renewals.is_empty() || !updates.is_empty());
        let published = renewals.into_iter().all(|u| outbox.publish_lazy(u))
            & updates.into_iter().all(|u| outbox.publish(u));
        if !published {
            tracing::warn!("bus outbox full: a binding change was not published");
        }
        let mut ok = ResponseBuilder::new(msg, 200, "OK");
        let r = read(replica);
        for b in r.bindings(&aor, now_ms) {
            let left = (b.expires_at_ms.saturating_sub(now_ms)).div_ceil(1000);
            ok = ok.header("Contact", &format!("<{}>;expires={left}", b.contact));
        }
        ok.build()
    }
}

/// A change to a binding travels lazily only while the old one has at least this long left.
const RENEW_MARGIN_MS: u64 = 2_000;

fn read(replica: &Arc<RwLock<Replica>>) -> std::sync::RwLockReadGuard<'_, Replica> {
    replica.read().unwrap_or_else(|p| p.into_inner())
}

fn bad(msg: &Message<'_>, reason: &str) -> Vec<u8> {
    ResponseBuilder::new(msg, 400, reason).build()
}

/// The extension number an address of record names.
pub fn aor_user(to: &NameAddr<'_>) -> Option<String> {
    match &to.uri {
        Uri::Sip(u) => u.user_decoded().map(|u| u.into_owned()),
        Uri::Tel(t) => Some(t.number.to_owned()),
        _ => None,
    }
}

/// A binding's identity within its AOR: instance and reg-id (RFC 5626) when given, else
/// the contact URI.
fn binding_key(contact: &NameAddr<'_>) -> String {
    match (contact.instance(), contact.reg_id()) {
        (Some(instance), Some(reg_id)) => format!("{instance};reg-id={reg_id}"),
        (Some(instance), None) => instance.to_owned(),
        _ => uri_text(contact),
    }
}

fn uri_text(contact: &NameAddr<'_>) -> String {
    contact.uri.to_string()
}

/// User names from the network, made safe for one log line.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}
