//! The macro behind the typed vocabulary: a `#[repr]` enum whose variants
//! carry their kernel value and their name (for metrics and the API), so a
//! value and its name can never drift apart the way a constant and a
//! parallel name array could.

/// A raw value that names no variant of a vocabulary enum (a map read
/// from an agent or kernel of another layout, a corrupted entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    /// The enum it was read as.
    pub kind: &'static str,
    pub raw: u32,
}

impl core::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} is not a known {}", self.raw, self.kind)
    }
}

impl core::error::Error for UnknownValue {}

/// Declares a vocabulary enum: `name()`, `ALL`, `COUNT`, `from_raw`,
/// `TryFrom<repr>`, `From<enum> for repr`, and `repr == enum` comparisons
/// (fields of shared structs stay plain integers: every bit pattern of a
/// map value must be valid, which an enum field is not).
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// Every variant, in value order.
            pub const ALL: [Self; Self::COUNT] = [$(Self::$variant),*];
            /// Number of variants (values run from 0 to `COUNT - 1`).
            pub const COUNT: usize = [$(Self::$variant),*].len();

            /// The name used in metrics, logs and the API.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)*
                }
            }

            /// The value as stored in maps and counters.
            #[inline(always)]
            pub const fn raw(self) -> $repr {
                self as $repr
            }

            /// The variant of a stored value, `None` for an unknown one.
            pub const fn from_raw(raw: $repr) -> Option<Self> {
                $(if raw == $value {
                    return Some(Self::$variant);
                })*
                None
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = $crate::UnknownValue;

            fn try_from(raw: $repr) -> Result<Self, Self::Error> {
                Self::from_raw(raw).ok_or($crate::UnknownValue {
                    kind: stringify!($name),
                    raw: u32::from(raw),
                })
            }
        }

        impl From<$name> for $repr {
            #[inline(always)]
            fn from(value: $name) -> $repr {
                value as $repr
            }
        }

        impl PartialEq<$name> for $repr {
            #[inline(always)]
            fn eq(&self, other: &$name) -> bool {
                *self == *other as $repr
            }
        }

        // Values are dense from 0: `ALL[v as usize]` is the variant of `v`.
        const _: () = {
            let mut i = 0;
            while i < $name::COUNT {
                assert!($name::ALL[i] as usize == i);
                i += 1;
            }
        };
    };
}

pub(crate) use vocabulary;
