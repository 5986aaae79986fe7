/*
 * libjpeg-turbo's lossless-transform parameters (`jpeg_transform_info` of
 * transupp.h), allocated on the C side. The Rust binding's declaration of
 * the struct lacks fields that transupp.c writes, so Rust never states its
 * layout: it holds an opaque pointer made here, by the compiler that reads
 * the very header transupp.c was built with.
 */
#include <stdio.h>
#include <stdlib.h>
#include "jpeglib.h"
#include "transupp.h"

/* Zeroed ("no crop, no trim, no drop") for `transform`, exact on whole
 * blocks (`perfect`: a transform that would cut a partial block fails
 * instead of trimming the edge). NULL when out of memory. */
jpeg_transform_info *imgproc_transform_new(JXFORM_CODE transform) {
  jpeg_transform_info *info = calloc(1, sizeof *info);
  if (info != NULL) {
    info->transform = transform;
    info->perfect = TRUE;
  }
  return info;
}

void imgproc_transform_free(jpeg_transform_info *info) { free(info); }
