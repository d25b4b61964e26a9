//! The local photo style: a "magic book" illustration made from the pixels
//! alone, with no model and no network. Outlines come from a difference of
//! Gaussians (dark ink where the picture has edges), shading from a few
//! flat tones of sepia wash, and the darkest tone is cross-hatched, as in
//! an old conjuring book's engravings. The result is deterministic: the
//! same photo always gives the same drawing.
//!
//! Everything here is plain arithmetic on an RGB buffer: it cannot fail on
//! any image [`super::photos::upright`] produced, and it never panics on
//! small or degenerate ones (1×1, one colour).

use image::{Rgb, RgbImage};

/// Paper and ink, as linear-ish sRGB triples.
const PAPER: [f32; 3] = [246.0, 238.0, 220.0];
const INK: [f32; 3] = [52.0, 38.0, 28.0];
/// The wash laid over the paper for each tone, darkest first: how much of
/// the way from paper towards ink it goes.
const WASH: [f32; 4] = [0.42, 0.24, 0.10, 0.0];

/// Draws `photo` as a magic-book illustration of the same size.
pub fn magic_book(photo: &RgbImage) -> RgbImage {
    let (w, h) = photo.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    if wu == 0 || hu == 0 {
        return photo.clone();
    }
    let gray: Vec<f32> = photo
        .pixels()
        .map(|Rgb([r, g, b])| {
            (0.299 * f32::from(*r) + 0.587 * f32::from(*g) + 0.114 * f32::from(*b)) / 255.0
        })
        .collect();
    let gray = stretch(gray);

    // Scale the strokes with the picture, so a phone photo downscaled to
    // 1600 pixels and a small one look alike.
    let sigma = (w.max(h) as f32 / 900.0).clamp(0.8, 2.5);
    let fine = gaussian(&gray, wu, hu, sigma);
    let coarse = gaussian(&gray, wu, hu, sigma * 1.6);
    let tone = gaussian(&gray, wu, hu, sigma * 3.0);

    // Hatching lines run diagonally, a few pixels apart at this scale.
    let spacing = (sigma * 4.0).round().max(3.0) as usize;

    let mut out = RgbImage::new(w, h);
    for (i, px) in out.pixels_mut().enumerate() {
        let (x, y) = (i % wu, i / wu);
        // Edges: where the fine blur is darker than its surroundings.
        let dog = coarse[i] - fine[i];
        let line = smoothstep(0.012, 0.045, dog);
        // Shading: the local brightness cut into four flat tones.
        let level = match tone[i] {
            t if t < 0.22 => 0,
            t if t < 0.45 => 1,
            t if t < 0.70 => 2,
            _ => 3,
        };
        let mut ink = WASH[level];
        if level == 0 && (x + y) % spacing == 0 {
            ink = ink.max(0.8);
        }
        if level <= 1 && (x + hu - y) % (spacing * 2) == 0 {
            ink = ink.max(0.55);
        }
        let ink = ink.max(line * 0.95);
        let mix = |c: usize| (PAPER[c] + (INK[c] - PAPER[c]) * ink).round() as u8;
        *px = Rgb([mix(0), mix(1), mix(2)]);
    }
    out
}

/// Spreads the brightness to the full 0..1 range (between the 2nd and
/// 98th percentiles), so a dim photo still has all four tones.
fn stretch(mut gray: Vec<f32>) -> Vec<f32> {
    let mut hist = [0usize; 256];
    for g in &gray {
        hist[(g * 255.0).round().clamp(0.0, 255.0) as usize] += 1;
    }
    let n = gray.len();
    let at = |frac: f32| {
        let target = (n as f32 * frac) as usize;
        let mut seen = 0;
        for (v, count) in hist.iter().enumerate() {
            seen += count;
            if seen > target {
                return v as f32 / 255.0;
            }
        }
        1.0
    };
    let (lo, hi) = (at(0.02), at(0.98));
    if hi - lo < 0.05 {
        return gray; // a flat picture: nothing to stretch
    }
    for g in &mut gray {
        *g = ((*g - lo) / (hi - lo)).clamp(0.0, 1.0);
    }
    gray
}

fn smoothstep(from: f32, to: f32, x: f32) -> f32 {
    let t = ((x - from) / (to - from)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// A separable Gaussian blur of a `w`×`h` plane, edges clamped.
fn gaussian(plane: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    let radius = (sigma * 3.0).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let clamp = |v: isize, max: usize| v.clamp(0, max as isize - 1) as usize;

    let mut across = vec![0.0; plane.len()];
    for y in 0..h {
        let row = &plane[y * w..(y + 1) * w];
        for x in 0..w {
            across[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, weight)| weight * row[clamp(x as isize + k as isize - radius, w)])
                .sum();
        }
    }
    let mut down = vec![0.0; plane.len()];
    for y in 0..h {
        for x in 0..w {
            down[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, weight)| {
                    weight * across[clamp(y as isize + k as isize - radius, h) * w + x]
                })
                .sum();
        }
    }
    down
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> RgbImage {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/photos/");
        let bytes = std::fs::read(format!("{path}{name}")).unwrap();
        super::super::photos::upright(&bytes).unwrap()
    }

    fn luma(p: &Rgb<u8>) -> f32 {
        (0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])) / 255.0
    }

    /// How far a pixel is from the paper-to-ink line: every colour of the
    /// drawing is a mix of the two.
    fn off_palette(p: &Rgb<u8>) -> f32 {
        let t = (f32::from(p[1]) - PAPER[1]) / (INK[1] - PAPER[1]);
        (0..3)
            .map(|c| (f32::from(p[c]) - (PAPER[c] + (INK[c] - PAPER[c]) * t)).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn a_photo_becomes_an_ink_drawing_on_paper() {
        for name in ["astronaut.jpg", "rocket.jpg", "coffee.jpg", "chelsea.jpg"] {
            let photo = fixture(name);
            let drawing = magic_book(&photo);
            assert_eq!(drawing.dimensions(), photo.dimensions(), "{name}");
            let n = drawing.pixels().len() as f32;
            let mean = drawing.pixels().map(luma).sum::<f32>() / n;
            assert!(mean > 0.55, "{name}: mostly paper, mean luma {mean}");
            let inked = drawing.pixels().filter(|p| luma(p) < 0.45).count() as f32 / n;
            assert!((0.01..0.45).contains(&inked), "{name}: ink covers {inked}");
            let worst = drawing.pixels().map(off_palette).fold(0.0, f32::max);
            assert!(
                worst <= 3.0,
                "{name}: a colour off the sepia palette by {worst}"
            );
        }
    }

    #[test]
    fn ink_follows_the_edges_of_the_photo() {
        // A dark disc on a light ground: the outline is inked, the ground
        // stays paper, the disc is shaded.
        let img = RgbImage::from_fn(200, 200, |x, y| {
            let (dx, dy) = (x as f32 - 100.0, y as f32 - 100.0);
            if (dx * dx + dy * dy).sqrt() < 50.0 {
                Rgb([30, 30, 30])
            } else {
                Rgb([230, 230, 230])
            }
        });
        let d = magic_book(&img);
        let at = |x, y| luma(d.get_pixel(x, y));
        assert!(at(10, 10) > 0.9, "the ground is paper");
        // Just inside the rim, on the dark side of the edge, is ink.
        let rim = (45..=49).map(|r| at(100 + r, 100)).fold(1.0, f32::min);
        assert!(rim < 0.4, "the outline is inked: {rim}");
        // The middle of the disc is washed or hatched, darker than paper.
        let inside: f32 = (90..110).map(|x| at(x, 100)).sum::<f32>() / 20.0;
        assert!(inside < 0.85, "the dark disc is shaded: {inside}");
    }

    #[test]
    fn degenerate_pictures_do_not_panic_and_drawing_is_deterministic() {
        for (w, h) in [(1, 1), (1, 7), (9, 1), (3, 3)] {
            let img = RgbImage::from_pixel(w, h, Rgb([120, 10, 200]));
            assert_eq!(magic_book(&img).dimensions(), (w, h));
        }
        let photo = fixture("coffee.jpg");
        assert_eq!(magic_book(&photo), magic_book(&photo));
    }
}
