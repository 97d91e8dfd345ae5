//! JSON read as its schema describes it, not as serde is willing to take it.
//!
//! [`Strict`] wraps any [`Deserializer`] (and, inside it, every nested one) to make two rules
//! of JSON Schema hold for derived types:
//! - **a struct is read only from an object**: serde also reads one from an array of its fields
//!   in order (`[1.5, 2]` for `{"requests_per_second": 1.5, "burst": 2}`), a form no schema
//!   documents;
//! - **an integer may be written as an integral number** (`5.0`, `1e2`): JSON Schema's
//!   `integer` is any number without a fractional part, while serde's integer types refuse
//!   every float. A fractional or out-of-range value is still refused.
//!
//! Everything else passes through untouched (a `serde_json::Value` field keeps `5.0` as
//! written). Content that serde buffers first (internally tagged, untagged and flattened types)
//! is read by serde's own deserializer and follows serde's rules.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};

/// Deserializes `T` from `de` under the rules above.
pub fn deserialize<'de, D: Deserializer<'de>, T: de::Deserialize<'de>>(
    de: D,
) -> Result<T, D::Error> {
    T::deserialize(Strict(de))
}

/// The adapter: wraps a deserializer, and the accesses and seeds it hands out.
pub struct Strict<D>(pub D);

/// What the wrapped visitor is reading.
#[derive(Clone, Copy)]
enum Want {
    Any,
    Struct,
    Integer,
}

struct Wrap<V> {
    inner: V,
    want: Want,
}

fn wrap<V>(inner: V, want: Want) -> Wrap<V> {
    Wrap { inner, want }
}

macro_rules! forward {
    ($want:ident: $($method:ident),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
            self.0.$method(wrap(v, Want::$want))
        })*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward!(Any: deserialize_any, deserialize_bool, deserialize_f32, deserialize_f64,
        deserialize_char, deserialize_str, deserialize_string, deserialize_bytes,
        deserialize_byte_buf, deserialize_option, deserialize_unit, deserialize_seq,
        deserialize_map, deserialize_identifier, deserialize_ignored_any);
    forward!(Integer: deserialize_i8, deserialize_i16, deserialize_i32, deserialize_i64,
        deserialize_i128, deserialize_u8, deserialize_u16, deserialize_u32, deserialize_u64,
        deserialize_u128);

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, wrap(v, Want::Any))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_newtype_struct(name, wrap(v, Want::Any))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_tuple(len, wrap(v, Want::Any))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .deserialize_tuple_struct(name, len, wrap(v, Want::Any))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .deserialize_struct(name, fields, wrap(v, Want::Struct))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, wrap(v, Want::Any))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// 2^64 and -2^63 as floats: the integral floats an integer type may be read from lie in
/// `[-2^63, 2^64)`.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
const MINUS_TWO_POW_63: f64 = -9_223_372_036_854_775_808.0;

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.inner.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.inner.visit_i64(v)
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
        self.inner.visit_i128(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.inner.visit_u64(v)
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
        self.inner.visit_u128(v)
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Self::Value, E> {
        self.visit_f64(f64::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        let integral = matches!(self.want, Want::Integer) && v.is_finite() && v.fract() == 0.0;
        if integral && (0.0..TWO_POW_64).contains(&v) {
            // In range and integral: the cast is exact.
            self.inner.visit_u64(v as u64)
        } else if integral && (MINUS_TWO_POW_63..0.0).contains(&v) {
            self.inner.visit_i64(v as i64)
        } else {
            self.inner.visit_f64(v)
        }
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<Self::Value, E> {
        self.inner.visit_char(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.inner.visit_str(v)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.inner.visit_borrowed_str(v)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.inner.visit_string(v)
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        self.inner.visit_bytes(v)
    }
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        self.inner.visit_borrowed_bytes(v)
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        self.inner.visit_byte_buf(v)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Strict(d))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(Strict(d))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if matches!(self.want, Want::Struct) {
            return Err(de::Error::invalid_type(Unexpected::Seq, &self));
        }
        self.inner.visit_seq(Strict(seq))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Strict(map))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Strict(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Strict<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Strict(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Strict<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Strict(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Strict<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Strict(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Strict(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Strict<A> {
    type Error = A::Error;
    type Variant = Strict<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        self.0
            .variant_seed(Strict(seed))
            .map(|(value, variant)| (value, Strict(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Strict<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Strict(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, wrap(v, Want::Any))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, wrap(v, Want::Struct))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        a: u32,
        b: Option<i64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        inner: Option<Inner>,
        list: Vec<Inner>,
        #[serde(default)]
        free: Value,
        #[serde(default)]
        ratio: f64,
    }

    fn read(s: &str) -> Result<Outer, String> {
        let mut de = serde_json::Deserializer::from_str(s);
        deserialize(&mut de).map_err(|e| e.to_string())
    }

    #[test]
    fn structs_only_from_objects_at_any_depth() {
        assert!(read(r#"{"inner": {"a": 1}, "list": [{"a": 2, "b": -3}]}"#).is_ok());
        for bad in [
            r#"[null, []]"#,
            r#"{"inner": [1, 2], "list": []}"#,
            r#"{"list": [[1, 2]]}"#,
        ] {
            let e = read(bad).expect_err(bad);
            assert!(e.contains("invalid type: sequence"), "{bad}: {e}");
        }
        // Through a `&Value` too (how quota settings are read).
        let v = json!({"inner": [1, 2], "list": []});
        assert!(deserialize::<_, Outer>(&v).is_err());
        assert!(
            serde_json::from_value::<Outer>(v).is_ok(),
            "plain serde takes it"
        );
    }

    #[test]
    fn integers_from_integral_numbers_only() {
        let o = read(r#"{"inner": {"a": 5.0, "b": -2e3}, "list": [{"a": 1e2}], "ratio": 2}"#)
            .expect("integral floats");
        assert_eq!(
            o.inner,
            Some(Inner {
                a: 5,
                b: Some(-2000)
            })
        );
        assert_eq!(o.list[0].a, 100);
        assert_eq!(o.ratio, 2.0);
        for bad in [
            r#"{"list": [{"a": 5.5}]}"#,
            r#"{"list": [{"a": -1.0}]}"#,
            r#"{"list": [{"a": 4294967296.0}]}"#,
            r#"{"list": [{"a": 1e300}]}"#,
            r#"{"list": [{"a": 1, "b": 1e19}]}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
        // Free-form JSON keeps what was written.
        let o = read(r#"{"list": [], "free": {"n": 5.0, "m": [1, 2]}}"#).expect("free");
        assert_eq!(o.free, json!({"n": 5.0, "m": [1, 2]}));
        assert!(o.free["n"].is_f64());
    }
}
