//! Cost of TLS on a listener: one full handshake (TLS 1.3, ECDSA P-256, X25519MLKEM768 or
//! X25519 as the provider prefers; no resumption) between the gateway's server settings and a
//! rustls client, in memory, so only the cryptography and the protocol are measured; the
//! same with a client certificate; and reading a verified client certificate's identity (done
//! once per mTLS connection). Run: `cargo bench --bench tls`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::config::{CertFiles, ClientAuth, ClientAuthMode, TlsConfig, TlsVersion};
use portcullis::tls::{PeerCert, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Drive a client and a server connection to the end of their handshake.
fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    let mut buf = Vec::with_capacity(16 * 1024);
    while client.is_handshaking() || server.is_handshaking() {
        while client.wants_write() {
            buf.clear();
            client.write_tls(&mut buf).expect("client write");
            server.read_tls(&mut &buf[..]).expect("server read");
            server.process_new_packets().expect("server process");
        }
        while server.wants_write() {
            buf.clear();
            server.write_tls(&mut buf).expect("server write");
            client.read_tls(&mut &buf[..]).expect("client read");
            client.process_new_packets().expect("client process");
        }
    }
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(names).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        (p.signed_by(&key, &issuer).expect("sign"), key)
    };
    let (server_cert, server_key) = leaf(vec!["bench.test".into()], "bench.test");
    let (client_cert, client_key) = leaf(Vec::new(), "app1");
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let files = CertFiles {
        cert: write("server.pem", server_cert.pem()),
        key: write("server.key", server_key.serialize_pem()),
    };
    let ca_file = write("ca.pem", ca_cert.pem());

    let server_for = |mode: ClientAuthMode| {
        let cfg = TlsConfig {
            certificates: vec![files.clone()],
            client_auth: ClientAuth { mode, ca: Some(ca_file.clone()) },
            min_version: TlsVersion::Tls12,
        };
        ServerTls::load("bench", &cfg).expect("server TLS").config()
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).expect("root");
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
    };
    let mut plain = builder().with_no_client_auth();
    plain.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: every handshake is a full one.
    plain.resumption = rustls::client::Resumption::disabled();
    let plain = Arc::new(plain);
    let key = PrivateKeyDer::try_from(client_key.serialize_der()).expect("key");
    let mut mtls = builder().with_client_auth_cert(vec![client_cert.der().clone()], key).expect("client cert");
    mtls.resumption = rustls::client::Resumption::disabled();
    let mtls = Arc::new(mtls);
    let name = ServerName::try_from("bench.test").expect("name");

    let server = server_for(ClientAuthMode::None);
    c.bench_function("tls/full_handshake", |b| {
        b.iter(|| {
            let mut cl = rustls::ClientConnection::new(plain.clone(), name.clone()).expect("client");
            let mut sv = rustls::ServerConnection::new(server.clone()).expect("server");
            handshake(&mut cl, &mut sv);
            black_box(sv.alpn_protocol().map(<[u8]>::len))
        })
    });
    let server = server_for(ClientAuthMode::Required);
    c.bench_function("tls/full_handshake_client_cert", |b| {
        b.iter(|| {
            let mut cl = rustls::ClientConnection::new(mtls.clone(), name.clone()).expect("client");
            let mut sv = rustls::ServerConnection::new(server.clone()).expect("server");
            handshake(&mut cl, &mut sv);
            black_box(sv.peer_certificates().map(<[CertificateDer<'_>]>::len))
        })
    });
    let der = client_cert.der().clone();
    c.bench_function("tls/peer_identity", |b| b.iter(|| black_box(PeerCert::parse(black_box(&der)))));
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
