// stb_image's PNG decoder, for the tests that read back the PNGs vae wrote.
// Static (STB_IMAGE_STATIC): each test file that includes it has its own copy.
#pragma once

// Third-party decoder: keep its warnings and its symbols out of our build.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#include <stb_image.h>
#pragma GCC diagnostic pop
