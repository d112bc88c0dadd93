//! Benchmark: messages verified per second (SPF + DKIM + ARC + DMARC) through the real
//! auth worker — shard-side batching, the worker thread, the shared DNS cache — with a
//! warm, pre-filled cache (closed world: nothing leaves the machine). The glommio side
//! keeps `CONCURRENCY` checks in flight, as many SMTP sessions would.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::spf::Spf;
use shardmail::auth::dkim::{self, Algorithm};
use shardmail::auth::verify::SpfCheck;
use shardmail::auth::worker::{AuthClient, AuthService, WorkerConfig};

const CONCURRENCY: usize = 64;

fn run(algorithm: Algorithm, messages: usize) {
    let dir = std::env::temp_dir().join(format!("shardmail-bench-auth-{}", std::process::id()));
    let key = dkim::generate(&dir, "sender.test", "s1", algorithm, true).expect("key");
    let _ = std::fs::remove_dir_all(&dir);
    let txt_value = key.txt_value();
    let until = Instant::now() + Duration::from_secs(3600);
    let service = AuthService::start(
        WorkerConfig {
            hostname: "mx.bench.test".into(),
            dns_servers: vec!["127.0.0.1:9".parse().expect("addr")],
            dns_timeout: Duration::from_millis(100),
            cache_entries: 10_000,
            queue_depth_max: 100_000,
        },
        Some(Box::new(move |c| {
            c.add_txt(
                "sender.test",
                Spf::parse(b"v=spf1 ip4:192.0.2.0/24 -all").expect("spf"),
                until,
            );
            c.add_txt(
                "mail.sender.test",
                Spf::parse(b"v=spf1 ip4:192.0.2.0/24 -all").expect("spf"),
                until,
            );
            c.add_txt(
                "s1._domainkey.sender.test",
                DomainKey::parse(txt_value.as_bytes()).expect("key"),
                until,
            );
            c.add_txt(
                "_dmarc.sender.test",
                Dmarc::parse(b"v=DMARC1; p=reject").expect("dmarc"),
                until,
            );
            // DMARCbis walks up to the TLD and checks the From domain exists.
            let nx = mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
                mail_auth::hickory_resolver::proto::op::ResponseCode::NXDomain,
            ));
            c.add_txt("_dmarc.test", mail_auth::Txt::Error(nx), until);
            c.add_ipv4(
                "sender.test",
                vec!["192.0.2.10".parse().expect("ip")],
                until,
            );
        })),
    )
    .expect("worker");
    let body = "The quick brown fox jumps over the lazy dog.\r\n".repeat(100);
    let unsigned =
        format!("From: a@sender.test\r\nTo: b@bench.test\r\nSubject: bench\r\n\r\n{body}");
    let signed = Bytes::from(format!(
        "{}{unsigned}",
        key.sign(unsigned.as_bytes()).expect("sign")
    ));
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("executor (RLIMIT_MEMLOCK?)");
    let (rate, passes) = ex.run(async move {
        let client = Rc::new(AuthClient::new(service));
        let check = SpfCheck {
            ip: "192.0.2.1".parse::<IpAddr>().expect("ip"),
            helo: "mail.sender.test".into(),
            mail_from: "a@sender.test".into(),
        };
        let spf = client.spf(check.clone()).await.expect("spf");
        let started = Instant::now();
        let per_task = messages / CONCURRENCY;
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let (client, spf, signed) = (client.clone(), spf.clone(), signed.clone());
                glommio::spawn_local(async move {
                    let mut passes = 0;
                    for _ in 0..per_task {
                        let v = client
                            .message(spf.clone(), signed.clone())
                            .await
                            .expect("verdict");
                        passes += usize::from(
                            v.header.contains("dkim=pass") && v.header.contains("dmarc=pass"),
                        );
                    }
                    passes
                })
            })
            .collect();
        let mut passes = 0;
        for t in tasks {
            passes += t.await;
        }
        (
            (per_task * CONCURRENCY) as f64 / started.elapsed().as_secs_f64(),
            passes,
        )
    });
    println!(
        "auth verify {:<8} {:>8.0} messages/s  (SPF+DKIM+ARC+DMARC, 4.6 KiB, warm cache, {passes} passes)",
        format!("{algorithm:?}"),
        rate
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 640 } else { 6400 };
    run(Algorithm::Ed25519, n);
    run(Algorithm::Rsa, n);
}
