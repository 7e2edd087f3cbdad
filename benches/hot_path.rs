//! Hot-path micro benchmarks: path normalisation and route lookup.
//! Run: `cargo bench --bench hot_path`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use portcullis::router::path::normalise;
use portcullis::router::{RequestView, Table};

fn table(n: usize) -> Table {
    let mut yaml = String::from(
        "version: 1\nlisteners: [{ name: p, bind: \"127.0.0.1:0\" }]\nupstreams: [{ name: u, targets: [{ url: \"http://127.0.0.1:1\" }] }]\nroutes:\n",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{ name: exact{i}, match: {{ path: /svc{i}/health }}, upstream: u, public: true }}\n  - {{ name: tpl{i}, match: {{ path: \"/svc{i}/orders/{{id}}\", methods: [GET] }}, upstream: u, public: true }}\n  - {{ name: pre{i}, match: {{ prefix: /svc{i} }}, upstream: u, public: true }}\n"
        ));
    }
    let cfg = portcullis::config::parse("bench.yaml", &yaml).expect("config");
    Table::new(&cfg.routes)
}

fn bench(c: &mut Criterion) {
    c.bench_function("normalise/clean", |b| b.iter(|| normalise(black_box("/v1/orders/42/items"))));
    c.bench_function("normalise/dots_and_escapes", |b| {
        b.iter(|| normalise(black_box("/v1/./orders/../orders/%34%32//items")))
    });
    let headers = HeaderMap::new();
    for n in [1usize, 10, 100] {
        let t = table(n);
        let last = n - 1;
        let exact = format!("/svc{last}/health");
        let tpl = format!("/svc{last}/orders/42");
        let pre = format!("/svc{last}/other/thing");
        for (name, path) in [("exact", &exact), ("template", &tpl), ("prefix", &pre)] {
            c.bench_function(&format!("route/{}x3/{name}", n), |b| {
                b.iter(|| {
                    t.find(black_box(&RequestView {
                        host: Some("api.example.com"),
                        path,
                        method: &Method::GET,
                        headers: &headers,
                        listener: Some("public"),
                    }))
                })
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
