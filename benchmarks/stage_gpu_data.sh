#!/usr/bin/env bash
# Stage CIFAR-10 for benchmarks/gpu_check.sh on a machine that has no copy of it.
#
#   bash benchmarks/stage_gpu_data.sh [SOURCE_DIR]
#
# copies cifar10-jpeg.tar.gz (19 MB, the 60,000 images as JPEG) and its maker,
# make_cifar10.py, from SOURCE_DIR (default: the first of shared/data,
# ../shared/data, ../../shared/data that has them) into gpu_check_data/, a folder
# git ignores. The device machine gets the working tree without ../shared, so
# name the folder in the run's carry: carry=["gpu_check_data"]. gpu_check.sh
# builds the data set from it there (about 20 s).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=(cifar10-jpeg.tar.gz make_cifar10.py)
SOURCE="${1:-}"
if [ -z "$SOURCE" ]; then
    for candidate in shared/data ../shared/data ../../shared/data; do
        if [ -f "$candidate/${FILES[0]}" ] && [ -f "$candidate/${FILES[1]}" ]; then
            SOURCE="$candidate"
            break
        fi
    done
fi
if [ -z "$SOURCE" ]; then
    echo "stage_gpu_data: no ${FILES[0]} with ${FILES[1]} in shared/data, ../shared/data or" \
         "../../shared/data; name the folder: bash benchmarks/stage_gpu_data.sh DIR" >&2
    exit 1
fi
for file in "${FILES[@]}"; do
    if [ ! -f "$SOURCE/$file" ]; then
        echo "stage_gpu_data: $SOURCE/$file not found" >&2
        exit 1
    fi
done
mkdir -p gpu_check_data
for file in "${FILES[@]}"; do
    cp "$SOURCE/$file" "gpu_check_data/$file.partial"       # never a half-copied file
    mv "gpu_check_data/$file.partial" "gpu_check_data/$file"
done
echo "staged in gpu_check_data/ ($(du -sh gpu_check_data | cut -f1)) from $SOURCE;" \
     "carry it: carry=[\"gpu_check_data\"]"
