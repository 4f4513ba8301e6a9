/* What ingest.c uses of the fan-out core (fanout.c): both are built into one library (`make core`). */
#ifndef WC_FANOUT_H
#define WC_FANOUT_H

#include <stdint.h>

typedef int (*wc_srtp_fn)(void *srtp, void *packet, int *len);  /* srtp_protect / srtp_unprotect(_rtcp) */

typedef struct wc_sender wc_sender;
struct wc_target;

int wc_fanout(wc_sender *s, struct wc_target *const *targets, int n, const uint8_t *tail, int tail_len,
              int b0, int marker, int64_t ext_seq, uint32_t ts, int payload_size);

#endif
