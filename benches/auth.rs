//! Cost of authenticating one request: an API key (digest + constant-time compare against a
//! directory of 10,000 keys) and a JWT (RS256 and ES256) with its keys already in memory,
//! both verified in full and seen before (from the verified-token cache).
//! Run: `cargo bench --bench auth`.

use std::hint::black_box;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderValue};
use portcullis::auth::Authenticator;
use portcullis::auth::apikey;
use portcullis::config::AuthMethod;

fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let lines: Vec<&str> = text.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

fn token(alg: &str, kid: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#);
    let claims = format!(
        r#"{{"iss":"https://id.bench/","aud":"api","sub":"user-1","exp":{},"iat":{now},"scope":"orders:read orders:write"}}"#,
        now + 86_400
    );
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn bench(c: &mut Criterion) {
    // API keys: 10,000 declared keys, one presented.
    let keys: Vec<apikey::NewKey> = (0..10_000).map(|_| apikey::generate().expect("random")).collect();
    let mut yaml = String::from("version: 1\nlisteners: [{ name: a, bind: \"127.0.0.1:1\" }]\nconsumers:\n");
    for (i, k) in keys.iter().enumerate() {
        let hex: String = k.digest.iter().map(|b| format!("{b:02x}")).collect();
        yaml.push_str(&format!("  - {{ name: c{i}, api_keys: [{{ id: {}, sha256: \"{hex}\" }}] }}\n", k.id));
    }
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa");
    let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec");
    let rsa_pem = pem("PUBLIC KEY", rsa.public_key().as_der().expect("der").as_ref());
    let ec_pem = pem("PUBLIC KEY", ec.public_key().as_der().expect("der").as_ref());
    yaml.push_str(&format!(
        "auth:\n  jwt:\n    - {{ issuer: \"https://id.bench/\", audiences: [api], algorithms: [RS256, ES256], keys: [{{ kid: r, pem: \"{}\" }}, {{ kid: e, pem: \"{}\" }}] }}\n",
        rsa_pem.replace('\n', "\\n"),
        ec_pem.replace('\n', "\\n")
    ));
    let cfg = portcullis::config::parse("bench.yaml", &yaml).expect("config");
    let auth = Authenticator::from_config(&cfg).expect("authenticator");

    let rs256 = token("RS256", "r", |m| {
        let mut sig = vec![0u8; rsa.public_modulus_len()];
        rsa.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), m, &mut sig).expect("sign");
        sig
    });
    let es256 = token("ES256", "e", |m| ec.sign(&SystemRandom::new(), m).expect("sign").as_ref().to_vec());

    let run = |methods: &[AuthMethod], h: &HeaderMap| {
        auth.authenticate(methods, h, None, None).now_or_never().expect("no fetch needed").is_ok()
    };
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_str(&keys[4242].key).expect("hv"));
    assert!(run(&[AuthMethod::ApiKey], &h));
    c.bench_function("auth/api_key/valid", |b| b.iter(|| black_box(run(&[AuthMethod::ApiKey], black_box(&h)))));
    let mut bad = h.clone();
    let mut wrong = keys[7].key.clone().into_bytes();
    wrong[40] = if wrong[40] == b'A' { b'B' } else { b'A' };
    bad.insert("x-api-key", HeaderValue::from_bytes(&wrong).expect("hv"));
    assert!(!run(&[AuthMethod::ApiKey], &bad));
    c.bench_function("auth/api_key/wrong_secret", |b| {
        b.iter(|| black_box(run(&[AuthMethod::ApiKey], black_box(&bad))))
    });

    for (name, t) in [("rs256", &rs256), ("es256", &es256)] {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(&format!("Bearer {t}")).expect("hv"));
        assert!(run(&[AuthMethod::Jwt], &h), "{name} token verifies");
        c.bench_function(&format!("auth/jwt/{name}/verify"), |b| {
            b.iter(|| {
                auth.clear_token_cache();
                black_box(run(&[AuthMethod::Jwt], black_box(&h)))
            })
        });
        c.bench_function(&format!("auth/jwt/{name}/seen_before"), |b| {
            b.iter(|| black_box(run(&[AuthMethod::Jwt], black_box(&h))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
