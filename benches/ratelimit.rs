//! Cost of the protection checks on the request path: one rate-limit check (GCRA on a
//! sharded, bounded key table), one quota check of a key in memory, and the ban check made
//! at accept and per request (with no bans, and with 100,000 banned addresses).
//! Run: `cargo bench --bench ratelimit`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config::{ProtectionConfig, QuotaConfig, QuotaPeriod, RateKey};
use portcullis::protect::Protection;
use portcullis::protect::bans::Subject;
use portcullis::ratelimit::Limiter;
use portcullis::ratelimit::quota::Quota;

fn bench(c: &mut Criterion) {
    let l = Limiter::new(1e9, 1_000_000, 100_000);
    let keys: Vec<[u8; 4]> = (0..10_000u32).map(|i| i.to_be_bytes()).collect();
    let mut now = 0u64;
    c.bench_function("ratelimit/check/one_key", |b| {
        b.iter(|| {
            now += 1;
            black_box(l.check(black_box(b"203.0.113.7"), now))
        })
    });
    let mut i = 0usize;
    c.bench_function("ratelimit/check/10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            now += 1;
            black_box(l.check(black_box(&keys[i]), now))
        })
    });

    let q = Quota::new(
        "bench",
        &QuotaConfig { key: RateKey::Consumer, limit: u64::MAX / 2, period: QuotaPeriod::Month, max_keys: 100_000 },
    );
    let t = 1_800_000_000;
    q.load(b"cbench", q.period(t), 0);
    c.bench_function("quota/check/key_in_memory", |b| b.iter(|| black_box(q.check(black_box(b"cbench"), t))));

    let p = Protection::default();
    let cfg = ProtectionConfig::default();
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
    c.bench_function("bans/refuse_ip/no_bans", |b| b.iter(|| black_box(p.refuse_ip(black_box(client), &cfg))));
    for i in 0..100_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        p.ban(Subject::client(ip, 64), "bench", Duration::from_secs(3600), "bench");
    }
    c.bench_function("bans/refuse_ip/100k_bans", |b| b.iter(|| black_box(p.refuse_ip(black_box(client), &cfg))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
