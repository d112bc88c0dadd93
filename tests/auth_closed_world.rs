//! Closed-world email authentication tests: every DNS answer is pre-filled in the
//! worker's cache, and the resolver points at a dead loopback port, so nothing leaves
//! the machine (a cache miss is a quick temperror). Covers SPF pass/fail/softfail/
//! neutral/none/temperror/permerror; DKIM valid, broken body hash, bad signature,
//! missing key, expired; DMARC reject/quarantine/none, aligned and not; an ARC chain;
//! and the policy decisions and headers that follow from each.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, DnsError, Txt};
use shardmail::auth::policy::{self, Disposition, DmarcKind, Policies, PublishedPolicy, SpfKind};
use shardmail::auth::verify::{self, Caches, SpfCheck, SpfVerdict};

const CLIENT: &str = "192.0.2.1";
const HOST: &str = "mx.receiver.test";

fn later() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn authenticator() -> mail_auth::MessageAuthenticator {
    // Port 9 (discard) on loopback: nothing answers, so any uncached query fails fast.
    verify::authenticator(
        &["127.0.0.1:9".parse().expect("addr")],
        Duration::from_millis(200),
    )
    .expect("resolver")
}

fn spf_record(caches: &Caches, domain: &str, record: &str) {
    caches.add_txt(
        domain,
        Spf::parse(record.as_bytes()).expect("valid SPF"),
        later(),
    );
}

fn not_found(caches: &Caches, name: &str) {
    let err = mail_auth::Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain));
    caches.add_txt(name, Txt::Error(err), later());
}

fn spf_of(caches: &Caches, mail_from: &str) -> SpfVerdict {
    let check = SpfCheck {
        ip: CLIENT.parse::<IpAddr>().expect("ip"),
        helo: "mail.sender.test".into(),
        mail_from: mail_from.into(),
    };
    runtime().block_on(verify::check_spf(&authenticator(), caches, HOST, check))
}

#[test]
fn spf_results() {
    let caches = Caches::new(1000);
    // The HELO name has no SPF record in all cases.
    not_found(&caches, "mail.sender.test");
    spf_record(&caches, "pass.test", "v=spf1 ip4:192.0.2.0/24 -all");
    spf_record(&caches, "fail.test", "v=spf1 ip4:198.51.100.0/24 -all");
    spf_record(&caches, "softfail.test", "v=spf1 ip4:198.51.100.0/24 ~all");
    spf_record(&caches, "neutral.test", "v=spf1 ?all");
    not_found(&caches, "none.test");
    let temp = mail_auth::Error::Dns(DnsError::Resolver("timed out".into()));
    caches.add_txt("temperror.test", Txt::Error(temp), later());
    // Two redirects (RFC 7208 §6.1) do not even parse: the resolver caches the parse
    // error, and SPF reports a permanent error.
    assert!(Spf::parse(b"v=spf1 redirect=pass.test redirect=fail.test").is_err());
    caches.add_txt(
        "permerror.test",
        Txt::Error(mail_auth::Error::ParseError),
        later(),
    );
    for (domain, expect) in [
        ("pass.test", SpfKind::Pass),
        ("fail.test", SpfKind::Fail),
        ("softfail.test", SpfKind::SoftFail),
        ("neutral.test", SpfKind::Neutral),
        ("none.test", SpfKind::None),
        ("temperror.test", SpfKind::TempError),
        ("permerror.test", SpfKind::PermError),
    ] {
        let v = spf_of(&caches, &format!("user@{domain}"));
        assert_eq!(v.kind(), expect, "{domain}");
    }
    // The null sender is checked as postmaster@HELO.
    assert_eq!(spf_of(&caches, "").sender(), "postmaster@mail.sender.test");
}

struct Signer {
    key_der: Vec<u8>,
    domain: &'static str,
    selector: &'static str,
}

impl Signer {
    fn new(caches: &Caches, domain: &'static str, selector: &'static str) -> Signer {
        let pair = DkimKeyPair::generate_ed25519().expect("key");
        let record = format!("v=DKIM1; k=ed25519; p={}", base64_encode(pair.public_key()));
        let name = format!("{selector}._domainkey.{domain}");
        caches.add_txt(
            &name,
            DomainKey::parse(record.as_bytes()).expect("valid key record"),
            later(),
        );
        Signer {
            key_der: pair.private_key().to_vec(),
            domain,
            selector,
        }
    }

    fn key(&self) -> Ed25519Key {
        Ed25519Key::from_pkcs8_der(&self.key_der).expect("key")
    }

    fn sign(&self, message: &str, expiration: Option<u64>) -> String {
        let mut signer = DkimSigner::from_key(self.key())
            .domain(self.domain)
            .selector(self.selector)
            .headers(["From", "To", "Subject"])
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        if let Some(x) = expiration {
            signer = signer.expiration(x);
        }
        let sig = signer.sign(message.as_bytes()).expect("sign");
        format!("{}{message}", sig.to_header())
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn message_from(from_domain: &str, subject: &str) -> String {
    format!(
        "From: Sender <user@{from_domain}>\r\nTo: rcpt@receiver.test\r\nSubject: {subject}\r\n\r\nHello there.\r\n"
    )
}

fn check(caches: &Caches, spf: &SpfVerdict, message: &str) -> policy::MessageVerdict {
    runtime().block_on(verify::check_message(
        &authenticator(),
        caches,
        HOST,
        spf,
        message.as_bytes(),
    ))
}

fn world() -> (Caches, Signer) {
    let caches = Caches::new(1000);
    not_found(&caches, "mail.sender.test");
    spf_record(&caches, "sender.test", "v=spf1 ip4:192.0.2.0/24 -all");
    spf_record(&caches, "spoofed.test", "v=spf1 ip4:198.51.100.0/24 -all");
    // DMARCbis walks the tree up to the TLD, and checks that the From domain exists.
    not_found(&caches, "_dmarc.test");
    for domain in ["sender.test", "spoofed.test"] {
        caches.add_ipv4(domain, vec!["192.0.2.10".parse().expect("ip")], later());
    }
    let signer = Signer::new(&caches, "sender.test", "s1");
    (caches, signer)
}

#[test]
fn dkim_valid_broken_body_bad_signature_missing_key_expired() {
    let (caches, signer) = world();
    not_found(&caches, "_dmarc.sender.test");
    let spf = spf_of(&caches, "user@sender.test");
    let signed = signer.sign(&message_from("sender.test", "valid"), None);

    let v = check(&caches, &spf, &signed);
    assert!(v.header.contains("dkim=pass"), "{}", v.header);
    assert!(
        v.header
            .starts_with(&format!("Authentication-Results: {HOST};")),
        "{}",
        v.header
    );
    assert!(v.header.contains("spf=pass"), "{}", v.header);

    // mail-auth reports a body hash mismatch as neutral (RFC 6376 §6.3 allows either).
    let broken_body = signed.replace("Hello there.", "Hello there!");
    let v = check(&caches, &spf, &broken_body);
    assert!(
        v.header.contains("dkim=neutral (body hash did not verify)"),
        "{}",
        v.header
    );

    let bad_signature = signed.replace("Subject: valid", "Subject: tampered");
    let v = check(&caches, &spf, &bad_signature);
    assert!(v.header.contains("dkim=fail"), "signature: {}", v.header);

    let missing = Signer {
        key_der: signer.key_der.clone(),
        domain: "sender.test",
        selector: "nokey",
    };
    not_found(&caches, "nokey._domainkey.sender.test");
    let v = check(
        &caches,
        &spf,
        &missing.sign(&message_from("sender.test", "missing"), None),
    );
    assert!(
        v.header.contains("dkim=permerror"),
        "missing key: {}",
        v.header
    );

    // x= one second after t=; checked two seconds later.
    let expiring = signer.sign(&message_from("sender.test", "expired"), Some(1));
    std::thread::sleep(Duration::from_millis(2100));
    let v = check(&caches, &spf, &expiring);
    assert!(!v.header.contains("dkim=pass"), "expired: {}", v.header);
    assert!(
        v.header.contains("dkim=neutral") || v.header.contains("dkim=fail"),
        "{}",
        v.header
    );
}

#[test]
fn dmarc_policies_aligned_and_not() {
    let (caches, signer) = world();
    let dmarc = |domain: &str, record: &str| {
        caches.add_txt(
            &format!("_dmarc.{domain}"),
            Dmarc::parse(record.as_bytes()).expect("dmarc"),
            later(),
        );
    };
    dmarc("sender.test", "v=DMARC1; p=reject");
    dmarc("spoofed.test", "v=DMARC1; p=reject");
    let policies = Policies::default();
    let rcpt = ["rcpt@receiver.test"];

    // Aligned DKIM (d=sender.test, From: sender.test) and SPF pass: DMARC pass.
    let spf = spf_of(&caches, "user@sender.test");
    let v = check(
        &caches,
        &spf,
        &signer.sign(&message_from("sender.test", "aligned"), None),
    );
    assert_eq!(v.dmarc, DmarcKind::Pass, "{}", v.header);
    assert!(v.header.contains("dmarc=pass"), "{}", v.header);
    assert_eq!(
        policy::disposition_for(&v, &policies, rcpt),
        Disposition::Inbox
    );

    // From: spoofed.test, signed by sender.test (unaligned), SPF of spoofed.test fails.
    let spf = spf_of(&caches, "user@spoofed.test");
    let v = check(
        &caches,
        &spf,
        &signer.sign(&message_from("spoofed.test", "unaligned"), None),
    );
    assert_eq!(
        (v.dmarc, v.published),
        (DmarcKind::Fail, PublishedPolicy::Reject),
        "{}",
        v.header
    );
    assert!(
        matches!(policy::disposition_for(&v, &policies, rcpt), Disposition::Reject(r) if r.starts_with("550 5.7.1"))
    );

    dmarc("spoofed.test", "v=DMARC1; p=quarantine");
    let v = check(&caches, &spf, &message_from("spoofed.test", "quarantine"));
    assert_eq!(v.published, PublishedPolicy::Quarantine);
    assert_eq!(
        policy::disposition_for(&v, &policies, rcpt),
        Disposition::Junk
    );

    dmarc("spoofed.test", "v=DMARC1; p=none");
    let v = check(&caches, &spf, &message_from("spoofed.test", "monitor"));
    assert_eq!(v.dmarc, DmarcKind::Fail);
    assert!(v.header.contains("dmarc=fail"), "{}", v.header);
    assert_eq!(
        policy::disposition_for(&v, &policies, rcpt),
        Disposition::Inbox
    );

    // A DNS failure on the DMARC record defers, never passes.
    let temp = mail_auth::Error::Dns(DnsError::Resolver("timed out".into()));
    caches.add_txt("_dmarc.spoofed.test", Txt::Error(temp), later());
    let v = check(&caches, &spf, &message_from("spoofed.test", "temp"));
    assert!(
        matches!(policy::disposition_for(&v, &policies, rcpt), Disposition::Defer(r) if r.starts_with("451 4.7."))
    );
}

#[test]
fn arc_chain_verifies() {
    let (caches, signer) = world();
    not_found(&caches, "_dmarc.sender.test");
    let sealer_key = Signer::new(&caches, "forwarder.test", "arc");
    let original = signer.sign(&message_from("sender.test", "arc"), None);
    // The forwarder verifies the message, then seals it (ARC set i=1, cv=none).
    let parsed = AuthenticatedMessage::parse(original.as_bytes()).expect("parse");
    let rt = runtime();
    let auth = authenticator();
    let arc_in = rt.block_on(auth.verify_arc(mail_auth::Parameters {
        params: &parsed,
        cache_txt: Some(&caches.txt),
        cache_mx: Some(&caches.mx),
        cache_ptr: Some(&caches.ptr),
        cache_ipv4: Some(&caches.ipv4),
        cache_ipv6: Some(&caches.ipv6),
    }));
    let results = AuthenticationResults::new("forwarder.test");
    let set = ArcSealer::<Ed25519Key, _>::from_key(sealer_key.key())
        .domain("forwarder.test")
        .selector("arc")
        .headers(["From", "To", "Subject", "DKIM-Signature"])
        .seal(&parsed, &results, &arc_in)
        .expect("seal");
    let sealed = format!("{}{original}", set.to_header());
    let spf = spf_of(&caches, "user@sender.test");
    let v = check(&caches, &spf, &sealed);
    assert!(v.header.contains("arc=pass"), "{}", v.header);
}

#[test]
fn worker_queue_is_bounded() {
    use shardmail::auth::worker::{AuthClient, AuthService, Unavailable, WorkerConfig};
    // One job may be in flight; the first hangs on a dead resolver (uncached domain).
    let service = AuthService::start(
        WorkerConfig {
            hostname: HOST.into(),
            dns_servers: vec!["127.0.0.1:9".parse().expect("addr")],
            dns_timeout: Duration::from_millis(200),
            cache_entries: 100,
            queue_depth_max: 1,
        },
        None,
    )
    .expect("worker");
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor");
    ex.run(async move {
        let client = std::rc::Rc::new(AuthClient::new(service.clone()));
        let check = || SpfCheck {
            ip: CLIENT.parse().expect("ip"),
            helo: "slow.test".into(),
            mail_from: "a@slow.test".into(),
        };
        let first = {
            let client = client.clone();
            let check = check();
            glommio::spawn_local(async move { client.spf(check).await })
        };
        glommio::timer::sleep(Duration::from_millis(50)).await; // let it be submitted
        assert_eq!(service.in_flight(), 1);
        assert_eq!(client.spf(check()).await.err(), Some(Unavailable::Busy));
        // The hung job finishes (temperror), freeing the slot.
        let verdict = first.await.expect("answered");
        assert_eq!(verdict.kind(), SpfKind::TempError);
        assert_eq!(service.in_flight(), 0);
        assert!(client.spf(check()).await.is_ok());
    });
}

#[test]
fn forward_confirmed_reverse_dns() {
    let caches = Caches::new(1000);
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    caches.add_ptr(ip("192.0.2.1"), &["mail.sender.test."], later());
    caches.add_ipv4(
        "mail.sender.test",
        vec!["192.0.2.1".parse().expect("ip")],
        later(),
    );
    // A PTR name that points elsewhere (forged), and a second name that points back.
    caches.add_ptr(
        ip("192.0.2.2"),
        &["forged.test.", "Real.Sender.Test."],
        later(),
    );
    caches.add_ipv4(
        "forged.test",
        vec!["198.51.100.1".parse().expect("ip")],
        later(),
    );
    caches.add_ipv4(
        "real.sender.test",
        vec!["192.0.2.2".parse().expect("ip")],
        later(),
    );
    caches.add_ptr(ip("192.0.2.3"), &["forged.test."], later());
    let check =
        |addr: &str| runtime().block_on(verify::fcrdns(&authenticator(), &caches, ip(addr)));
    assert_eq!(
        check("192.0.2.1"),
        verify::Fcrdns::Pass("mail.sender.test".into())
    );
    assert_eq!(
        check("192.0.2.2"),
        verify::Fcrdns::Pass("real.sender.test".into())
    );
    assert_eq!(check("192.0.2.3"), verify::Fcrdns::Fail);
    // Nothing cached and the resolver dead: no verdict, not a failure.
    assert_eq!(check("192.0.2.4"), verify::Fcrdns::TempError);
}
