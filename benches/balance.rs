//! Balancer pick cost per algorithm at 3 and 100 targets (first attempts, all healthy).
//! Run: `cargo bench --bench balance`.

use std::hint::black_box;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config::{Balance, HashOn};
use portcullis::upstream::balance::{Candidate, Live, Tried, hash_bytes};

fn bench(c: &mut Criterion) {
    let algorithms = [
        ("round_robin", Balance::RoundRobin),
        ("weighted", Balance::Weighted),
        ("least_request", Balance::LeastRequest),
        ("consistent_hash", Balance::ConsistentHash(HashOn::Ip)),
        ("random", Balance::Random),
    ];
    for n in [3usize, 100] {
        let members: Vec<Candidate> = (0..n)
            .map(|i| Candidate { available: true, backup: false, weight: 1 + (i % 4) as u32, back_at: None })
            .collect();
        let names: Vec<String> = (0..n).map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250)).collect();
        let keys: Vec<&str> = names.iter().map(String::as_str).collect();
        let loads: Vec<u32> = (0..n).map(|i| (i * 7 % 13) as u32).collect();
        for (name, balance) in &algorithms {
            let live = Live::build(0, balance, &members, &keys, 0, Duration::ZERO);
            let counter = AtomicUsize::new(0);
            let tried = Tried::default();
            let key = Some(hash_bytes(b"account-42"));
            c.bench_function(&format!("pick/{name}/{n}"), |b| {
                b.iter(|| {
                    live.pick(black_box(balance), &counter, black_box(key), &tried, |i| {
                        (loads[usize::from(i)], members[usize::from(i)].weight)
                    })
                })
            });
        }
    }
    c.bench_function("hash_key/header", |b| b.iter(|| hash_bytes(black_box(b"account-1234567"))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
