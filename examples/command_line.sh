#!/usr/bin/env bash
# The gradlens command line, as docs/cli.md shows it. examples/command_line.py runs every
# `gradlens ...` line below (in a folder holding a small ImageFolder `shapes/`), so these
# commands are tested; run this file itself with `bash examples/command_line.sh` in such a folder.
set -euo pipefail

# --8<-- [start:layers]
gradlens layers resnet18 --input-size 3 64 64
gradlens layers gradlens.demos.training:TinyCNN --input-size 3 64 64  # module:callable of your own code
# --8<-- [end:layers]

# --8<-- [start:cam]
gradlens cam shapes/circle/circle0.png shapes/square/square0.png --model resnet18 --image-size 64 --out maps
gradlens cam shapes/circle/circle0.png --model resnet18 --image-size 64 --layer layer3 \
    --method gradcampp --target 3 --out maps
gradlens cam shapes/square/square0.png --model resnet18 --image-size 64 --method saliency --out maps
# --8<-- [end:cam]

# --8<-- [start:extract]
gradlens extract --model resnet18 --image-size 64 --data shapes --layers layer3 layer4 \
    --pool avg --out features
gradlens extract --model resnet18 --image-size 64 --data shapes/circle --layers layer4 \
    --pool avg --out circles      # a folder of image files: no classes, file names in the manifest
# --8<-- [end:extract]

# --8<-- [start:errors]
gradlens cam shapes/circle/circle0.png --model resnet18 --layer layer5 --out maps || echo "exit status $?"
# --8<-- [end:errors]
