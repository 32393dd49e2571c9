//! Logging shim: forwards to `defmt` or `log`, or to nothing.
//! Enabling both `defmt` and `log` is a compile error.

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("features `defmt` and `log` of anytime-core are mutually exclusive");

#[allow(unused_macros)]
macro_rules! warn_ {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($($arg)*);
        #[cfg(feature = "log")]
        ::log::warn!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = ($($arg)*,); }
    }};
}

#[allow(unused_macros)]
macro_rules! debug_ {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::debug!($($arg)*);
        #[cfg(feature = "log")]
        ::log::debug!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        { let _ = ($($arg)*,); }
    }};
}

#[allow(unused_imports)]
pub(crate) use {debug_ as debug, warn_ as warn};
