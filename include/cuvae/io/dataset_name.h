// The data sets cuvae knows, recognized by their training images.
//
// A data set is named by the fingerprint its training images already get for
// checkpoints (data_fingerprint in checkpoint.h: image count, shape and the
// CRC-32 of the pixels), so the name does not depend on whether the files are
// plain or gzipped, nor on what the directory is called:
//   "mnist"          60,000 images of 28x28, crc32 f3639b56 (LeCun et al.'s
//                    train-images-idx3-ubyte, SHA-256 ba891046...)
//   "fashion-mnist"  60,000 images of 28x28, crc32 ae65dccd (Zalando's
//                    train-images-idx3-ubyte, SHA-256 c59f468a...)
// and anything else is "unknown". tools/fetch_data.sh NAME DIR fetches both.
#pragma once

#include <string>
#include <vector>

#include "cuvae/io/idx.h"

namespace cuvae {

// "mnist", "fashion-mnist" or "unknown" for a data_fingerprint() string.
// No I/O: for a caller that has the fingerprint already (vae train does).
std::string dataset_name_from_fingerprint(const std::string& fingerprint);

// The same for training images already read.
std::string recognize_dataset(const IdxImages& train_images);

// Reads DIR/train-images-idx3-ubyte (or its .gz, plain preferred, as
// load_mnist_split does) and names it. Throws cuvae::Error naming the file
// when it is missing or not a valid IDX image file.
std::string recognize_dataset(const std::string& dir);

// The class names of a data set's labels 0..9 ("0".."9" for mnist, "T-shirt/top",
// "Trouser", ... for fashion-mnist); empty for "unknown".
std::vector<std::string> dataset_class_names(const std::string& name);

}  // namespace cuvae
