//! Cost of one rate-limit check (GCRA on a sharded, bounded key table).
//! Run: `cargo bench --bench ratelimit`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::ratelimit::Limiter;

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
