//! Photos for documents: upright (EXIF orientation applied), every piece
//! of metadata gone (GPS above all: the image is decoded and re-encoded
//! from pixels), and no larger than documents need.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

/// Longest side of a photo in the documents, pixels.
pub const MAX_SIDE: u32 = 1600;

#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    #[error("the photo could not be decoded")]
    Undecodable,
}

pub struct Prepared {
    pub jpeg: Vec<u8>,
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Decodes with bounded memory, rotates upright, downscales and re-encodes
/// as JPEG (for HTML/Markdown) and PNG (DOCX embeds PNG).
pub fn prepare(bytes: &[u8]) -> Result<Prepared, PhotoError> {
    encode(&upright(bytes)?)
}

/// Decodes with bounded memory, rotates upright and downscales to at most
/// [`MAX_SIDE`]: the pixels and nothing else of the file.
pub fn upright(bytes: &[u8]) -> Result<image::RgbImage, PhotoError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| PhotoError::Undecodable)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|_| PhotoError::Undecodable)?;
    let orientation = decoder.orientation().map_err(|_| PhotoError::Undecodable)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|_| PhotoError::Undecodable)?;
    img.apply_orientation(orientation);
    if img.width() > MAX_SIDE || img.height() > MAX_SIDE {
        img = img.resize(MAX_SIDE, MAX_SIDE, image::imageops::FilterType::Triangle);
    }
    Ok(img.to_rgb8())
}

/// JPEG and PNG of `rgb`, for the documents.
pub fn encode(rgb: &image::RgbImage) -> Result<Prepared, PhotoError> {
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(rgb)
        .map_err(|_| PhotoError::Undecodable)?;
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(rgb.clone())
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|_| PhotoError::Undecodable)?;
    Ok(Prepared {
        jpeg,
        png,
        width: rgb.width(),
        height: rgb.height(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG 40×20 (landscape) with an EXIF block saying "rotate 90° CW"
    /// (orientation 6) and a GPS tag.
    fn rotated_jpeg_with_gps() -> Vec<u8> {
        let img = image::RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut plain = Vec::new();
        JpegEncoder::new_with_quality(&mut plain, 90)
            .encode_image(&img)
            .unwrap();
        // TIFF (little endian): IFD0 with Orientation=6 and a GPS IFD
        // pointer; GPS IFD with GPSLatitudeRef = "N".
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"II*\0");
        tiff.extend_from_slice(&8u32.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&6u32.to_le_bytes());
        tiff.extend_from_slice(&0x8825u16.to_le_bytes()); // GPS IFD
        tiff.extend_from_slice(&4u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&38u32.to_le_bytes());
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&0x0001u16.to_le_bytes()); // GPSLatitudeRef
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&2u32.to_le_bytes());
        tiff.extend_from_slice(b"N\0\0\0");
        tiff.extend_from_slice(&0u32.to_le_bytes());
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&plain[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied_and_all_metadata_is_dropped() {
        let input = rotated_jpeg_with_gps();
        assert!(input.windows(4).any(|w| w == b"Exif"));
        let out = prepare(&input).unwrap();
        assert_eq!((out.width, out.height), (20, 40), "not turned upright");
        assert!(!out.jpeg.windows(4).any(|w| w == b"Exif"), "EXIF survived");
        assert!(!out.png.windows(4).any(|w| w == b"eXIf"));
        // Upright: the red half (left before turning 90° clockwise) is on top.
        let img = image::load_from_memory(&out.jpeg).unwrap().to_rgb8();
        assert!(img.get_pixel(10, 5)[0] > 200 && img.get_pixel(10, 35)[2] > 200);
    }

    #[test]
    fn garbage_is_reported_not_panicked_on() {
        assert!(prepare(b"").is_err());
        assert!(prepare(b"\xFF\xD8\xFF\xE0 truncated").is_err());
        assert!(prepare(b"<svg/>").is_err());
    }

    #[test]
    fn large_photos_are_scaled_down() {
        let img = image::RgbImage::new(3200, 1000);
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 50)
            .encode_image(&img)
            .unwrap();
        let out = prepare(&jpeg).unwrap();
        assert_eq!((out.width, out.height), (1600, 500));
    }
}
