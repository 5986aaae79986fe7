/*
 * libjpeg's side of the engine's Huffman decoder (`entropy_decoder.rs`).
 * libjpeg keeps driving the file: it reads the markers,
 * checks each scan's parameters and progression (its own decoder's
 * `start_pass` still runs for every scan), walks the MCUs and reads the
 * restart markers. Only the entropy-coded data between them is decoded in
 * Rust. This part lives in C because it touches libjpeg's private structs
 * (`jpegint.h`), whose layout only the headers libjpeg was built with know.
 */
#include <stddef.h>
#include <stdio.h>
#define JPEG_INTERNALS
#include "jpeglib.h"

/* What the Rust decoder needs to know of a scan; `entropy_decoder.rs` declares
 * the same struct. */
typedef struct {
  int progressive;
  int Ss, Se, Ah, Al;
  int blocks_in_MCU;
  /* Per block of an MCU: its component's place in the scan, and the
   * Huffman table it is decoded with (NULL for DC refinement, which has
   * none; in a sequential scan the DC table, and `ac_table` the AC one). */
  int component[D_MAX_BLOCKS_IN_MCU];
  const JHUFF_TBL *table[D_MAX_BLOCKS_IN_MCU];
  const JHUFF_TBL *ac_table[D_MAX_BLOCKS_IN_MCU];
  /* Per block of an MCU: its component's MCU width, the blocks its row
   * advances from one MCU to the next. */
  int step[D_MAX_BLOCKS_IN_MCU];
  /* Where a marker met in the data is left for libjpeg's marker reader. */
  int *unread_marker;
} imgproc_scan;

/* The Rust decoder's bits, in `entropy_decoder.rs`. */
#define IMGPROC_RAN_OUT 1  /* a marker came before the MCU's last bit */
#define IMGPROC_BAD_CODE 2 /* a bit pattern that is no Huffman code */
extern size_t imgproc_scan_state_size(void);
extern void imgproc_scan_start(void *state, const imgproc_scan *scan,
                               j_decompress_ptr cinfo);
extern int imgproc_scan_decode_row(void *state, JBLOCKROW blocks,
                                   size_t count);
extern int imgproc_scan_decode_mcus(void *state, JBLOCKROW *first,
                                    size_t count);
extern void imgproc_scan_sync(void *state, j_decompress_ptr cinfo);
extern unsigned int imgproc_scan_discard(void *state);
extern void imgproc_scan_restart(void *state, j_decompress_ptr cinfo);

typedef struct {
  struct jpeg_entropy_decoder pub; /* first: what cinfo->entropy points at */
  struct jpeg_entropy_decoder *libjpeg; /* libjpeg's own decoder */
  unsigned int restarts_to_go;
  JDIMENSION mcus_left; /* in this scan */
  void *state;          /* the Rust decoder's, from the image pool */
} imgproc_entropy;

static void describe_scan(j_decompress_ptr cinfo, imgproc_entropy *e) {
  imgproc_scan scan;
  int blkn;
  scan.progressive = cinfo->progressive_mode;
  scan.Ss = cinfo->Ss;
  scan.Se = cinfo->Se;
  scan.Ah = cinfo->Ah;
  scan.Al = cinfo->Al;
  scan.blocks_in_MCU = cinfo->blocks_in_MCU;
  for (blkn = 0; blkn < cinfo->blocks_in_MCU; blkn++) {
    int ci = cinfo->MCU_membership[blkn];
    jpeg_component_info *compptr = cinfo->cur_comp_info[ci];
    scan.component[blkn] = ci;
    scan.step[blkn] = compptr->MCU_width;
    /* libjpeg's start_pass has built its own tables from these (failing
     * when one is missing), so the numbers are in range here. */
    scan.ac_table[blkn] = cinfo->ac_huff_tbl_ptrs[compptr->ac_tbl_no];
    if (!cinfo->progressive_mode)
      scan.table[blkn] = cinfo->dc_huff_tbl_ptrs[compptr->dc_tbl_no];
    else if (cinfo->Ss != 0)
      scan.table[blkn] = cinfo->ac_huff_tbl_ptrs[compptr->ac_tbl_no];
    else if (cinfo->Ah == 0)
      scan.table[blkn] = cinfo->dc_huff_tbl_ptrs[compptr->dc_tbl_no];
    else
      scan.table[blkn] = NULL;
  }
  scan.unread_marker = &cinfo->unread_marker;
  imgproc_scan_start(e->state, &scan, cinfo);
  e->restarts_to_go = cinfo->restart_interval;
  e->mcus_left = cinfo->MCUs_per_row * cinfo->MCU_rows_in_scan;
  e->pub.insufficient_data = FALSE;
}

METHODDEF(void) start_pass(j_decompress_ptr cinfo) {
  imgproc_entropy *e = (imgproc_entropy *)cinfo->entropy;
  /* libjpeg's decoder checks the scan against the progression so far and
   * records it (`coef_bits`); it finds its own state through
   * cinfo->entropy. */
  cinfo->entropy = e->libjpeg;
  (*e->libjpeg->start_pass)(cinfo);
  cinfo->entropy = &e->pub;
  describe_scan(cinfo, e);
}

/* The next restart marker, when the interval's MCUs are done, as
 * jdphuff.c's process_restart. The Rust decoder reads the input directly;
 * libjpeg's source is moved past what it read before libjpeg reads from it
 * again (a restart marker, the markers after the scan). */
static void restart_if_due(j_decompress_ptr cinfo, imgproc_entropy *e) {
  if (cinfo->restart_interval == 0 || e->restarts_to_go > 0)
    return;
  /* Whole bytes the bits left over hold were not data: counted as skipped,
   * as libjpeg does. */
  cinfo->marker->discarded_bytes += imgproc_scan_discard(e->state);
  imgproc_scan_sync(e->state, cinfo);
  if (!(*cinfo->marker->read_restart_marker)(cinfo))
    ERREXIT(cinfo, JERR_CANT_SUSPEND);
  imgproc_scan_restart(e->state, cinfo);
  e->restarts_to_go = cinfo->restart_interval;
  if (cinfo->unread_marker == 0)
    e->pub.insufficient_data = FALSE;
}

/* Warns as jdphuff.c does; after a marker met too early, the rest of the
 * restart interval is left as it is. */
static void report(j_decompress_ptr cinfo, imgproc_entropy *e, int status) {
  if (status & IMGPROC_BAD_CODE)
    WARNMS(cinfo, JWRN_HUFF_BAD_CODE);
  if (status & IMGPROC_RAN_OUT) {
    WARNMS(cinfo, JWRN_HIT_MARKER);
    e->pub.insufficient_data = TRUE;
  }
}

/* `n` MCUs done: after the scan's last, libjpeg reads markers. */
static void count_mcus(j_decompress_ptr cinfo, imgproc_entropy *e,
                       JDIMENSION n) {
  if (cinfo->restart_interval)
    e->restarts_to_go -= n;
  e->mcus_left = n < e->mcus_left ? e->mcus_left - n : 0;
  if (e->mcus_left == 0)
    imgproc_scan_sync(e->state, cinfo);
}

/* `count` consecutive MCUs of the scan, the first's blocks in `first`,
 * handed to the Rust decoder a restart interval at a time: a run of a
 * one-component scan's block row (one block an MCU), or of an interleaved
 * scan's MCUs (sequential, or a progressive DC scan). */
static void decode_mcus(j_decompress_ptr cinfo, imgproc_entropy *e,
                        JBLOCKROW *first, JDIMENSION count) {
  JBLOCKROW mcu[D_MAX_BLOCKS_IN_MCU];
  int blkn;
  for (blkn = 0; blkn < cinfo->blocks_in_MCU; blkn++)
    mcu[blkn] = first[blkn];
  while (count > 0) {
    JDIMENSION n = count;
    restart_if_due(cinfo, e);
    if (cinfo->restart_interval && n > e->restarts_to_go)
      n = e->restarts_to_go;
    if (!e->pub.insufficient_data)
      report(cinfo, e,
             cinfo->comps_in_scan == 1
                 ? imgproc_scan_decode_row(e->state, mcu[0], n)
                 : imgproc_scan_decode_mcus(e->state, mcu, n));
    count_mcus(cinfo, e, n);
    count -= n;
    if (count == 0)
      break;
    /* A one-component scan's MCU is one block wide. */
    for (blkn = 0; blkn < cinfo->blocks_in_MCU; blkn++)
      mcu[blkn] += n * cinfo->cur_comp_info[cinfo->MCU_membership[blkn]]->MCU_width;
  }
}

/* One MCU, as jdhuff.c's and jdphuff.c's decode_mcu (libjpeg calls it only
 * from the coefficient controller's consume_data, which this decoder
 * replaces; it is here for completeness). */
METHODDEF(boolean) decode_mcu(j_decompress_ptr cinfo, JBLOCKROW *MCU_data) {
  decode_mcus(cinfo, (imgproc_entropy *)cinfo->entropy, MCU_data, 1);
  return TRUE;
}

/* jdcoefct.c's consume_data (the whole-image buffer's), with a row of
 * MCUs decoded in one call instead of an MCU a call: one iMCU row of the
 * current scan. */
METHODDEF(int) consume_data(j_decompress_ptr cinfo) {
  imgproc_entropy *e = (imgproc_entropy *)cinfo->entropy;
  JBLOCKARRAY buffer[MAX_COMPS_IN_SCAN];
  JBLOCKROW MCU_buffer[D_MAX_BLOCKS_IN_MCU];
  jpeg_component_info *compptr;
  int ci, rows, yoffset, yindex, xindex, blkn;

  for (ci = 0; ci < cinfo->comps_in_scan; ci++) {
    compptr = cinfo->cur_comp_info[ci];
    buffer[ci] = (*cinfo->mem->access_virt_barray)(
        (j_common_ptr)cinfo, cinfo->coef->coef_arrays[compptr->component_index],
        cinfo->input_iMCU_row * compptr->v_samp_factor,
        (JDIMENSION)compptr->v_samp_factor, TRUE);
  }
  compptr = cinfo->cur_comp_info[0];
  if (cinfo->comps_in_scan > 1)
    rows = 1;
  else if (cinfo->input_iMCU_row < cinfo->total_iMCU_rows - 1)
    rows = compptr->v_samp_factor;
  else
    rows = compptr->last_row_height;

  for (yoffset = 0; yoffset < rows; yoffset++) {
    if (!e->pub.insufficient_data)
      cinfo->master->last_good_iMCU_row = cinfo->input_iMCU_row;
    if (cinfo->comps_in_scan == 1) {
      decode_mcus(cinfo, e, &buffer[0][yoffset], cinfo->MCUs_per_row);
      continue;
    }
    /* The Rust decoder walks the row itself, from the first MCU's blocks. */
    blkn = 0;
    for (ci = 0; ci < cinfo->comps_in_scan; ci++) {
      compptr = cinfo->cur_comp_info[ci];
      for (yindex = 0; yindex < compptr->MCU_height; yindex++)
        for (xindex = 0; xindex < compptr->MCU_width; xindex++)
          MCU_buffer[blkn++] = buffer[ci][yindex + yoffset] + xindex;
    }
    decode_mcus(cinfo, e, MCU_buffer, cinfo->MCUs_per_row);
  }
  if (++(cinfo->input_iMCU_row) < cinfo->total_iMCU_rows)
    return JPEG_ROW_COMPLETED;
  (*cinfo->inputctl->finish_input_pass)(cinfo);
  return JPEG_SCAN_COMPLETED;
}

/* Puts the Rust decoder in place of libjpeg's Huffman decoder. To be
 * called once the decompressor's modules exist (libjpeg's decoder has
 * started the first scan) and before any of its data is read: at the first
 * progress-monitor call of jpeg_read_coefficients or jpeg_start_decompress.
 * Only where the whole image's coefficients are kept (the driver above):
 * progressive files, and sequential ones read for their coefficients
 * (where every component is wanted whole; decoding those to pixels goes
 * an MCU at a time through other paths). Arithmetic-coded files keep
 * libjpeg's decoder. Returns whether it did. */
int imgproc_use_own_entropy_decoder(j_decompress_ptr cinfo) {
  imgproc_entropy *e;
  if (cinfo->arith_code || cinfo->entropy == NULL || cinfo->coef == NULL ||
      cinfo->coef->coef_arrays == NULL ||
      cinfo->entropy->start_pass == start_pass)
    return 0;
  if (!cinfo->progressive_mode && cinfo->global_state != DSTATE_RDCOEFS)
    return 0;
  e = (imgproc_entropy *)(*cinfo->mem->alloc_small)(
      (j_common_ptr)cinfo, JPOOL_IMAGE, sizeof(imgproc_entropy));
  e->state = (*cinfo->mem->alloc_small)((j_common_ptr)cinfo, JPOOL_IMAGE,
                                        imgproc_scan_state_size());
  e->libjpeg = cinfo->entropy;
  e->pub.start_pass = start_pass;
  e->pub.decode_mcu = decode_mcu;
  cinfo->entropy = &e->pub;
  describe_scan(cinfo, e);
  /* The input controller takes the coefficient controller's method at
   * each scan's start; the first scan has started. */
  cinfo->coef->consume_data = consume_data;
  cinfo->inputctl->consume_input = consume_data;
  return 1;
}
