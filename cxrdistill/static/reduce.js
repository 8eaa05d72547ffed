// cxrdistill low-bandwidth mode: the browser reduces a chest X-ray to a student's input before anything is sent.
//
// A port of the server's preparation (cxrdistill.inference.display_image, then cxrdistill.data.transforms
// .model_input): gray in [0, 1] (ITU-R 601 luminance, transparency over black, as Pillow's "L"), area-averaged to at
// most 512 px, letterboxed onto the 224-px base square (anti-aliased: an integer area reduction, then bilinear
// sampling with the edge pixels repeated and everything outside the film black) and area-averaged to the student's
// size. Only that size x size image, 8 bits a pixel, leaves the browser. tests/test_app.py compares this code
// with model_input on real films.
(() => {
  const DISPLAY_SIZE = 512;
  const BASE_SIZE = 224;

  // Python's round(): halves go to the even neighbour
  function roundHalfEven(x) {
    const floor = Math.floor(x);
    const diff = x - floor;
    if (diff > 0.5) return floor + 1;
    if (diff < 0.5) return floor;
    return floor % 2 === 0 ? floor : floor + 1;
  }

  // torch's adaptive average pooling ("area" interpolation): output cell i covers [floor(i*n/m), ceil((i+1)*n/m))
  function areaResize(image, height, width, outHeight, outWidth) {
    if (height === outHeight && width === outWidth) return image;
    const out = new Float32Array(outHeight * outWidth);
    for (let i = 0; i < outHeight; i++) {
      const y0 = Math.floor((i * height) / outHeight);
      const y1 = Math.ceil(((i + 1) * height) / outHeight);
      for (let j = 0; j < outWidth; j++) {
        const x0 = Math.floor((j * width) / outWidth);
        const x1 = Math.ceil(((j + 1) * width) / outWidth);
        let sum = 0;
        for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) sum += image[y * width + x];
        out[i * outWidth + j] = sum / ((y1 - y0) * (x1 - x0));
      }
    }
    return out;
  }

  // transforms.warp of a letterbox matrix (scale s, shift tx, ty) onto a size x size square
  function letterbox(image, height, width, size) {
    let scale = size / Math.max(height, width);
    const tx = (size - width * scale) / 2;
    const ty = (size - height * scale) / 2;
    let scaleX = scale;
    let scaleY = scale;
    const factor = scale < 1 ? Math.max(1, Math.trunc(1 / scale)) : 1;
    if (factor > 1) {
      const smallHeight = Math.max(1, roundHalfEven(height / factor));
      const smallWidth = Math.max(1, roundHalfEven(width / factor));
      image = areaResize(image, height, width, smallHeight, smallWidth);
      scaleX = (scale * width) / smallWidth;
      scaleY = (scale * height) / smallHeight;
      height = smallHeight;
      width = smallWidth;
    }
    const out = new Float32Array(size * size);
    for (let i = 0; i < size; i++) {
      const py = (i + 0.5 - ty) / scaleY; // output pixel centre -> source coordinates
      for (let j = 0; j < size; j++) {
        const px = (j + 0.5 - tx) / scaleX;
        if (px < 0 || px >= width || py < 0 || py >= height) continue; // letterbox padding stays 0
        // grid_sample, bilinear, align_corners=False, border padding: sample at (px - 0.5, py - 0.5), clamped
        const sx = Math.min(Math.max(px - 0.5, 0), width - 1);
        const sy = Math.min(Math.max(py - 0.5, 0), height - 1);
        const x0 = Math.floor(sx);
        const y0 = Math.floor(sy);
        const x1 = Math.min(x0 + 1, width - 1);
        const y1 = Math.min(y0 + 1, height - 1);
        const fx = sx - x0;
        const fy = sy - y0;
        const top = image[y0 * width + x0] * (1 - fx) + image[y0 * width + x1] * fx;
        const bottom = image[y1 * width + x0] * (1 - fx) + image[y1 * width + x1] * fx;
        out[i * size + j] = top * (1 - fy) + bottom * fy;
      }
    }
    return out;
  }

  // gray [0, 1] pixels of an image file, as the server reads it (8 bits: what a browser decodes)
  async function decode(file) {
    const bitmap = await createImageBitmap(file, {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
      imageOrientation: "from-image",
    });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d", { colorSpace: "srgb" });
    context.drawImage(bitmap, 0, 0);
    const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const gray = new Float32Array(bitmap.width * bitmap.height);
    for (let k = 0; k < gray.length; k++) {
      const r = rgba[4 * k];
      const g = rgba[4 * k + 1];
      const b = rgba[4 * k + 2];
      const alpha = rgba[4 * k + 3];
      let level = r === g && g === b ? r : (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16; // Pillow's "L"
      if (alpha < 255) level = Math.round((level * alpha) / 255); // over black
      gray[k] = level / 255;
    }
    return { gray, height: bitmap.height, width: bitmap.width };
  }

  function isDicom(bytes, name) {
    const magic = bytes.length > 132 && String.fromCharCode(...bytes.slice(128, 132)) === "DICM";
    return magic || /\.(dcm|dicom)$/i.test(name);
  }

  // the student's size x size input (values in [0, 1]) from decoded gray pixels
  function reduce(gray, height, width, size) {
    const scale = Math.max(height, width) / DISPLAY_SIZE;
    if (scale > 1) {
      const displayHeight = Math.max(1, roundHalfEven(height / scale));
      const displayWidth = Math.max(1, roundHalfEven(width / scale));
      gray = areaResize(gray, height, width, displayHeight, displayWidth);
      height = displayHeight;
      width = displayWidth;
    }
    const base = Math.max(BASE_SIZE, size);
    return areaResize(letterbox(gray, height, width, base), base, base, size, size);
  }

  // "size:base64 of size*size bytes" for the server, or "error:<why>"
  async function payload(file, size) {
    if (!file) return "error:Choose an X-ray file first.";
    const bytes = new Uint8Array(await file.arrayBuffer());
    if (isDicom(bytes, file.name)) {
      return (
        "error:A browser cannot decode DICOM files, so this mode cannot reduce them. Export the film as PNG or " +
        "JPG, or use the normal upload above (the whole file is then sent)."
      );
    }
    let decoded;
    try {
      decoded = await decode(file);
    } catch (error) {
      return "error:Your browser could not read this file as an image (PNG or JPG expected).";
    }
    const view = reduce(decoded.gray, decoded.height, decoded.width, size);
    const quantised = new Uint8Array(view.length);
    for (let k = 0; k < view.length; k++) quantised[k] = Math.min(255, Math.max(0, Math.round(view[k] * 255)));
    let text = "";
    for (const value of quantised) text += String.fromCharCode(value);
    return `${size}:${btoa(text)}`;
  }

  window.cxrReduce = { payload, reduce, decode, areaResize, letterbox };
})();
