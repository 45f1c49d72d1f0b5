//! Payload encoding (serde + CBOR by default) and schema evolution by upcasting.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::types::Payload;

/// The serializer id [`CborCodec`] writes.
pub const CBOR_SERIALIZER_ID: &str = "cbor";

/// Turns values of `T` into [`Payload`]s and back. Replace it to use another format.
pub trait Codec<T>: Send + Sync {
    /// Encodes `value`, with a serializer id and a manifest naming its type and version.
    fn encode(&self, value: &T) -> Result<Payload>;
    /// Decodes `payload`, upcasting older schema versions to the current type.
    fn decode(&self, payload: &Payload) -> Result<T>;
}

/// A function that turns the CBOR value of schema version `n` into version `n + 1`.
pub type Upcaster = Arc<dyn Fn(ciborium::Value) -> Result<ciborium::Value> + Send + Sync>;

/// serde + CBOR (ciborium), with a versioned manifest `"<type name>/v<version>"` and
/// upcasters for stored older versions.
///
/// ```
/// use persistence_api::{Codec, CborCodec};
/// use serde::{Deserialize, Serialize};
///
/// // Version 1 stored {"amount": 5}; version 2 renamed it to "cents".
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct DepositedV1 { amount: u64 }
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Deposited { cents: u64 }
///
/// let old = CborCodec::<DepositedV1>::new("bank.Deposited").encode(&DepositedV1 { amount: 5 }).unwrap();
/// assert_eq!(old.manifest, "bank.Deposited/v1");
///
/// let codec = CborCodec::<Deposited>::new("bank.Deposited")
///     .with_version(2)
///     .with_upcaster(1, |mut v| {
///         if let ciborium::Value::Map(fields) = &mut v {
///             for (k, _) in fields.iter_mut() {
///                 if k.as_text() == Some("amount") { *k = ciborium::Value::Text("cents".into()); }
///             }
///         }
///         Ok(v)
///     });
/// assert_eq!(codec.decode(&old).unwrap(), Deposited { cents: 5 });
/// ```
pub struct CborCodec<T> {
    type_name: String,
    version: u32,
    upcasters: BTreeMap<u32, Upcaster>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for CborCodec<T> {
    fn clone(&self) -> Self {
        CborCodec {
            type_name: self.type_name.clone(),
            version: self.version,
            upcasters: self.upcasters.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for CborCodec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CborCodec")
            .field("type_name", &self.type_name)
            .field("version", &self.version)
            .field("upcasters_from", &self.upcasters.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<T> CborCodec<T> {
    /// A codec for `type_name` at schema version 1.
    pub fn new(type_name: impl Into<String>) -> Self {
        CborCodec {
            type_name: type_name.into(),
            version: 1,
            upcasters: BTreeMap::new(),
            _type: PhantomData,
        }
    }

    /// Sets the current schema version (what `encode` writes).
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version.max(1);
        self
    }

    /// Adds the upcaster from version `from` to `from + 1`.
    pub fn with_upcaster<F>(mut self, from: u32, upcaster: F) -> Self
    where
        F: Fn(ciborium::Value) -> Result<ciborium::Value> + Send + Sync + 'static,
    {
        self.upcasters.insert(from, Arc::new(upcaster));
        self
    }

    /// The manifest `encode` writes.
    pub fn manifest(&self) -> String {
        format!("{}/v{}", self.type_name, self.version)
    }

    fn parse_manifest<'a>(&self, manifest: &'a str) -> Result<(&'a str, u32)> {
        let (name, version) = manifest.rsplit_once("/v").ok_or_else(|| {
            Error::serialization(format!(
                "manifest {manifest:?} has no \"/v<version>\" suffix"
            ))
        })?;
        let version = version.parse::<u32>().map_err(|_| {
            Error::serialization(format!("manifest {manifest:?} has no numeric version"))
        })?;
        Ok((name, version))
    }
}

/// Encodes `value` as CBOR bytes.
pub fn to_cbor<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(128);
    ciborium::into_writer(value, &mut buf)
        .map_err(|e| Error::serialization("CBOR encoding failed").with_source(e.to_string()))?;
    Ok(buf)
}

/// Decodes CBOR bytes into a `T`.
pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    ciborium::from_reader(bytes)
        .map_err(|e| Error::serialization("CBOR decoding failed").with_source(e.to_string()))
}

/// A shared codec is a codec (as [`crate::EntityConfig::event_codec`] holds it), so the
/// entity's codec can decode for a projection too.
impl<T, C: Codec<T> + ?Sized> Codec<T> for Arc<C> {
    fn encode(&self, value: &T) -> Result<Payload> {
        (**self).encode(value)
    }
    fn decode(&self, payload: &Payload) -> Result<T> {
        (**self).decode(payload)
    }
}

impl<T: Serialize + DeserializeOwned> Codec<T> for CborCodec<T> {
    fn encode(&self, value: &T) -> Result<Payload> {
        Ok(Payload::new(
            CBOR_SERIALIZER_ID,
            self.manifest(),
            to_cbor(value)?,
        ))
    }

    fn decode(&self, payload: &Payload) -> Result<T> {
        if payload.serializer_id != CBOR_SERIALIZER_ID {
            return Err(Error::serialization(format!(
                "payload was written by serializer {:?}, not {CBOR_SERIALIZER_ID:?}",
                payload.serializer_id
            )));
        }
        let (name, version) = self.parse_manifest(&payload.manifest)?;
        if name != self.type_name {
            return Err(Error::serialization(format!(
                "payload holds {name:?}, this codec decodes {:?}",
                self.type_name
            )));
        }
        if version == self.version {
            return from_cbor(&payload.bytes);
        }
        if version > self.version {
            return Err(Error::serialization(format!(
                "payload {:?} was written by a newer schema version than this codec knows (v{})",
                payload.manifest, self.version
            )));
        }
        let mut value: ciborium::Value = from_cbor(&payload.bytes)?;
        for from in version..self.version {
            let upcaster = self.upcasters.get(&from).ok_or_else(|| {
                Error::serialization(format!(
                    "no upcaster from {}/v{from} to v{} is registered",
                    self.type_name,
                    from + 1
                ))
            })?;
            value = upcaster(value)?;
        }
        value.deserialized().map_err(|e| {
            Error::serialization("upcast value does not fit the current type")
                .with_source(e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V3 {
        name: String,
        cents: u64,
    }

    #[test]
    fn round_trip_and_chain_of_upcasters() {
        let v1 = Payload::new("cbor", "t/v1", to_cbor(&("ann",)).unwrap());
        let codec = CborCodec::<V3>::new("t")
            .with_version(3)
            .with_upcaster(1, |v| {
                let name = v.as_array().and_then(|a| a.first().cloned()).unwrap();
                Ok(ciborium::Value::Map(vec![(
                    ciborium::Value::Text("name".into()),
                    name,
                )]))
            })
            .with_upcaster(2, |mut v| {
                v.as_map_mut().unwrap().push((
                    ciborium::Value::Text("cents".into()),
                    ciborium::Value::Integer(0.into()),
                ));
                Ok(v)
            });
        assert_eq!(
            codec.decode(&v1).unwrap(),
            V3 {
                name: "ann".into(),
                cents: 0
            }
        );
        let now = V3 {
            name: "bo".into(),
            cents: 7,
        };
        let p = codec.encode(&now).unwrap();
        assert_eq!(p.manifest, "t/v3");
        assert_eq!(codec.decode(&p).unwrap(), now);
    }

    #[test]
    fn newer_version_unknown_type_and_missing_upcaster_are_errors() {
        let codec = CborCodec::<V3>::new("t").with_version(3);
        let bytes = to_cbor(&1u8).unwrap();
        for manifest in ["t/v4", "other/v3", "t/v1", "t"] {
            let err = codec
                .decode(&Payload::new("cbor", manifest, bytes.clone()))
                .unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Serialization, "{manifest}");
        }
        let err = codec
            .decode(&Payload::new("json", "t/v3", bytes))
            .unwrap_err();
        assert!(err.to_string().contains("json"));
    }
}
