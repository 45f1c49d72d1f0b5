//! The CBOR codec with manifests and a chain of upcasters, on bytes and manifests a store
//! can hold but this project did not write: decoding never panics, and every failure is a
//! `Serialization` error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persistence_api::{CborCodec, Codec, ErrorKind, Payload};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Account {
    name: String,
    cents: u64,
    tags: Vec<String>,
}

fn codec() -> CborCodec<Account> {
    CborCodec::new("bank.Account")
        .with_version(3)
        // v1 was a bare name; v2 a map without tags.
        .with_upcaster(1, |v| {
            let name = v
                .as_text()
                .map(str::to_owned)
                .ok_or_else(|| persistence_api::Error::serialization("v1 is a text"))?;
            Ok(ciborium::Value::Map(vec![
                (ciborium::Value::Text("name".into()), ciborium::Value::Text(name)),
                (ciborium::Value::Text("cents".into()), ciborium::Value::Integer(0.into())),
            ]))
        })
        .with_upcaster(2, |mut v| {
            let map = v
                .as_map_mut()
                .ok_or_else(|| persistence_api::Error::serialization("v2 is a map"))?;
            map.push((
                ciborium::Value::Text("tags".into()),
                ciborium::Value::Array(Vec::new()),
            ));
            Ok(v)
        })
}

fuzz_target!(|data: &[u8]| {
    let codec = codec();
    // The first byte picks the manifest: the three known versions, a newer one, another
    // type, or a manifest read from the input itself.
    let (manifest, bytes) = match data.split_first() {
        None => ("bank.Account/v3".to_string(), data),
        Some((b, rest)) => match b % 6 {
            0 => ("bank.Account/v1".into(), rest),
            1 => ("bank.Account/v2".into(), rest),
            2 => ("bank.Account/v3".into(), rest),
            3 => ("bank.Account/v4".into(), rest),
            4 => ("bank.Other/v3".into(), rest),
            _ => {
                let cut = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
                (
                    String::from_utf8_lossy(&rest[..cut]).into_owned(),
                    rest.get(cut + 1..).unwrap_or(&[]),
                )
            }
        },
    };
    let payload = Payload::new("cbor", manifest, bytes.to_vec());
    match codec.decode(&payload) {
        Ok(value) => {
            // What decodes encodes again and decodes to the same value.
            let again = codec.encode(&value).expect("a decoded value encodes");
            assert_eq!(codec.decode(&again).expect("round trip"), value);
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Serialization, "{e}"),
    }
    let _ = persistence_api::from_cbor::<ciborium::Value>(bytes);
});
