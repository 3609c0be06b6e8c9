//! What key credentials cost per request: signing a client assertion (RS256, ES256) for a
//! token request, and a DPoP proof for an API request.
//! Run: `cargo bench -p tokenlease --all-features --bench key_credentials`

use criterion::{criterion_group, criterion_main, Criterion};
use tokenlease::source::assertion::{client_assertion, SigningAlgorithm, SigningKey};
use tokenlease::source::dpop::DpopKey;
use tokenlease::SecretString;

fn openssl_key(args: &[&str]) -> SecretString {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl makes the benchmark's keys");
    assert!(out.status.success());
    SecretString::new(String::from_utf8(out.stdout).unwrap())
}

fn signing(c: &mut Criterion) {
    let rsa = SigningKey::from_pem(
        SigningAlgorithm::Rs256,
        &openssl_key(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ]),
        "bench",
    )
    .unwrap();
    let ec = SigningKey::from_pem(
        SigningAlgorithm::Es256,
        &openssl_key(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]),
        "bench",
    )
    .unwrap();
    let audience = "https://idp.example/realms/x/protocol/openid-connect/token";
    c.bench_function("client_assertion_rs256", |b| {
        b.iter(|| client_assertion(&rsa, "reports", audience).unwrap())
    });
    c.bench_function("client_assertion_es256", |b| {
        b.iter(|| client_assertion(&ec, "reports", audience).unwrap())
    });
    let dpop = DpopKey::generate().unwrap();
    let url = url::Url::parse("https://api.example/v1/items?page=2").unwrap();
    let token = SecretString::from("an-access-token-of-forty-three-characters-x");
    c.bench_function("dpop_proof_api_request", |b| {
        b.iter(|| dpop.proof("GET", &url, Some(&token)).unwrap())
    });
}

criterion_group!(benches, signing);
criterion_main!(benches);
