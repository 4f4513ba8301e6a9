/* The compiled fan-out core: one call sends one publisher packet to every started player of a group.
 *
 * Per player it does what Consumer.forward does in Python — write this player's RTP header (payload type,
 * sequence number, timestamp, SSRC) and the shared tail into the next of the sender's send slots, protect it
 * in place, queue it — and one sendmmsg(2) sends every `capacity` players (fanout.py: SEND_CAPACITY). The
 * slots are few and reused, so the packets are written into memory that is still in the cache, and the first
 * players' packets leave before the last ones are protected. It owns no keys and no sessions: the SRTP
 * contexts are pylibsrtp's (created by the DTLS layer), and `protect` is pylibsrtp's own srtp_protect, so
 * there is one libsrtp in the process. Loaded with cffi's ABI mode (see fanout.py);
 * built by `make core` with the system C compiler, nothing else.
 *
 * Memory rules: Python owns every pointer handed in here (targets, SRTP contexts, addresses) and keeps them
 * alive while they are reachable from a group; this file only allocates the sender's message arrays and slots.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/types.h>

#include "fanout.h"

#define WC_ABI_VERSION 9  /* bump with any change to the structs or signatures below (fanout.py checks it) */
#define WC_SLOT 1536         /* one send slot: a packet and its auth tag, in whole cache lines */
#define WC_MAX_PACKET 1480   /* leaves room for the auth tag (GCM 16, HMAC-SHA1-80 10) */

#define WC_STATE_LINES 13   /* lines of libsrtp and OpenSSL state srtp_protect reads for one stream */

typedef int (*wc_protect_fn)(void *srtp, void *rtp, int *len);

int wc_abi_version(void) { return WC_ABI_VERSION; }

struct wc_target {
    void *srtp;               /* libsrtp srtp_t of the player's outbound session */
    const void *name;         /* struct sockaddr_in, kept current by the transport */
    int64_t seq_offset;       /* player seq = (ext_seq + seq_offset) mod 2^16 */
    int64_t ts_offset;        /* player ts = (ts + ts_offset) mod 2^32 */
    int64_t start_ext_seq;    /* packets from before the player started are not sent */
    uint32_t ssrc;
    uint32_t payload_type;
    uint64_t packets;         /* forwarded packets and their payload octets (for SRs and stats) */
    uint64_t octets;
    uint64_t dropped;         /* too long, or refused by libsrtp */
    /* Where this player's SRTP state lives (find_srtp_state): read two players ahead to warm it. */
    const void *srtp_state[WC_STATE_LINES];
    int32_t srtp_state_found; /* 0 not looked for yet, 1 found, -1 not found */
    /* OpenSSL's own state of the stream's AES (key schedule; for GCM the hash tables): read with the above
     * when warming reaches OpenSSL too (wc_set_warm(2)); 0 lines otherwise. */
    int32_t aes_state_lines;
    const void *aes_state;
};

/* One publisher packet for a range of targets. */
typedef struct wc_job {
    struct wc_target *const *targets;
    int n;
    const uint8_t *tail;
    int tail_len;
    int b0, marker;
    int64_t ext_seq;
    uint32_t ts;
    int payload_size;
} wc_job;

struct wc_helper;

typedef struct wc_sender {
    int fd;
    unsigned int capacity;
    wc_protect_fn protect;
    struct mmsghdr *msgs;
    struct iovec *iovs;
    uint8_t *slots;           /* capacity × WC_SLOT bytes: the packets of one sendmmsg */
    uint64_t sent;            /* datagrams the kernel took */
    uint64_t dropped;         /* datagrams it refused (full socket buffer) */
    struct wc_helper *helper; /* a second thread for big fan-outs, or NULL */
} wc_sender;

/* The helper thread takes the second half of a fan-out of at least `min_split` targets while the calling
 * thread (the event loop's, the GIL released by cffi) does the first half; the call returns when both are
 * done, so every pointer in the job stays valid. Targets are disjoint, so are their SRTP sessions and buffers;
 * the helper has its own message arrays. */
typedef struct wc_helper {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake, finished;
    wc_sender *sender;
    wc_job job;
    int min_split;
    int pending;              /* a job is posted and not finished */
    int stop;
    int result;
    uint64_t jobs;
} wc_helper;

wc_sender *wc_sender_new(int fd, int capacity, void *protect)
{
    if (capacity <= 0 || protect == NULL)
        return NULL;
    wc_sender *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->msgs = calloc((size_t)capacity, sizeof(*s->msgs));
    s->iovs = calloc((size_t)capacity, sizeof(*s->iovs));
    s->slots = aligned_alloc(64, (size_t)capacity * WC_SLOT);
    if (s->msgs == NULL || s->iovs == NULL || s->slots == NULL) {
        free(s->msgs);
        free(s->iovs);
        free(s->slots);
        free(s);
        return NULL;
    }
    s->fd = fd;
    s->capacity = (unsigned int)capacity;
    s->protect = (wc_protect_fn)protect;
    for (int i = 0; i < capacity; i++) {
        s->msgs[i].msg_hdr.msg_iov = &s->iovs[i];
        s->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return s;
}

static void helper_stop(wc_helper *h);

void wc_sender_free(wc_sender *s)
{
    if (s == NULL)
        return;
    if (s->helper != NULL)
        helper_stop(s->helper);
    free(s->msgs);
    free(s->iovs);
    free(s->slots);
    free(s);
}

uint64_t wc_sender_sent(const wc_sender *s)
{
    return s->sent + (s->helper != NULL ? s->helper->sender->sent : 0);
}

uint64_t wc_sender_dropped(const wc_sender *s)
{
    return s->dropped + (s->helper != NULL ? s->helper->sender->dropped : 0);
}

uint64_t wc_sender_helper_jobs(const wc_sender *s) { return s->helper != NULL ? s->helper->jobs : 0; }

static void flush(wc_sender *s, unsigned int n)
{
    unsigned int done = 0;
    while (done < n) {
        int r = sendmmsg(s->fd, s->msgs + done, n - done, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {  /* non-blocking socket with a full buffer: UDP drops, and so do we */
            s->dropped += n - done;
            return;
        }
        done += (unsigned int)r;
        s->sent += (uint64_t)r;
    }
}

/* Queue the packet in send slot `*queued` (`len` bytes at `buf`, to the IPv4 address `name`); once every slot is
 * queued, send them with one sendmmsg and start again from the first. Returns how many that sent (0 or all). */
static inline unsigned int queue_slot(wc_sender *s, unsigned int *queued, const void *name, uint8_t *buf, int len)
{
    struct mmsghdr *m = &s->msgs[*queued];
    m->msg_hdr.msg_name = (void *)name;
    m->msg_hdr.msg_namelen = 16;
    s->iovs[*queued].iov_base = buf;
    s->iovs[*queued].iov_len = (size_t)len;
    if (++*queued < s->capacity)
        return 0;
    flush(s, *queued);
    *queued = 0;
    return s->capacity;
}

static inline void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* --- Warming the next players' SRTP state --------------------------------------------------------------
 *
 * srtp_protect follows a chain of about ten small heap blocks per stream (session -> stream list -> stream ->
 * keys -> cipher -> cipher state -> OpenSSL context, plus the replay window and the key limit). In a big
 * fan-out, between two packets of one player the other players' state pushes these out of the cache, and
 * each is then a miss that waits for the one before (every address comes from the block before). So once a
 * player's stream exists its blocks' addresses are found, once, and kept in its target, and the loop reads
 * one byte of each of them two players ahead: independent loads, whose misses overlap each other and this
 * player's work. Plain reads, not __builtin_prefetch: measured in the server, prefetches of the same
 * addresses saved ~2 % of the fan-out's CPU and the reads ~10 % (why the prefetches do so little here, I
 * have not established).
 *
 * That reads libsrtp's private structures (libsrtp 2.x as pylibsrtp 1.0.0 bundles it; offsets below), so
 * wc_srtp_layout_check must first recognise them in real sessions (fanout.py runs it on load and only then
 * calls wc_set_warm), and find_srtp_state checks each stream again. Every address kept is the start of a
 * line inside a block of libsrtp or OpenSSL that lives as long as the session, which the target's owner
 * keeps alive as it does for srtp_protect itself.
 *
 * Level 2 also warms OpenSSL's AES state, the largest block left cold: OpenSSL 3 keeps a cipher's key schedule
 * (and GCM's hash tables) in its provider's context, `algctx` of the EVP_CIPHER_CTX, 15 lines for GCM and 7
 * for AES-CTR. Measured in the server (fan-outs alternating between two builds, the thread's CPU time around
 * each call): −1.8 to −5.2 % of the call at 100 players, −4.1 to −5.9 % at 300, against −1.4 to +0.7 %
 * between two copies of one build. (Also reading the third line of the EVP_CIPHER_CTX and the replay window's
 * second line: −0.6 to −2.2 % more, inside that spread; warming three players ahead: the same. Not done.)
 * Its offsets and sizes are those of OpenSSL 3.5.4 as pylibsrtp 1.0.0 links it in: fanout.py asks for
 * level 2 only when that library reports exactly that version and wc_aes_state_check recognises real
 * sessions, and find_srtp_state checks each context again. */
#define SRTP_CTX_STREAM_LIST 0      /* srtp_ctx_t.stream_list (a sentinel stream) */
#define STREAM_SSRC 0               /* srtp_stream_ctx_t.ssrc, as it is on the wire */
#define STREAM_SESSION_KEYS 8
#define STREAM_NUM_MASTER_KEYS 16
#define STREAM_RDBX_WINDOW_BITS 32  /* rtp_rdbx.bitmask.length */
#define STREAM_RDBX_WORDS 40        /* rtp_rdbx.bitmask.word */
#define STREAM_DIRECTION 84
#define STREAM_NEXT 112
#define STREAM_SIZE 128
#define KEYS_RTP_CIPHER 0
#define KEYS_RTP_AUTH 16
#define KEYS_LIMIT 80
#define CIPHER_STATE 8
#define CIPHER_ALGORITHM 20
#define AUTH_STATE 8
#define GCM_KEY_SIZE 0              /* srtp_aes_gcm_ctx_t */
#define GCM_EVP_CTX 8
#define ICM_KEY_SIZE 32             /* srtp_aes_icm_ctx_t */
#define ICM_EVP_CTX 40
#define EVP_CTX_KNOWN_SIZE 88       /* EVP_CIPHER_CTX is larger than this in every OpenSSL since 1.1 */
#define EVP_CTX_CIPHER 0            /* OpenSSL 3.5: EVP_CIPHER_CTX.cipher */
#define EVP_CTX_ALGCTX 176          /* .algctx, the provider's context: the AES state */
#define EVP_CTX_FETCHED_CIPHER 184  /* .fetched_cipher, the same object as .cipher once fetched */
#define AES_STATE_GCM_LINES 15      /* PROV_AES_GCM_CTX: 953-968 bytes */
#define AES_STATE_CTR_LINES 7       /* PROV_AES_CTX (AES-ICM): 441-456 bytes */
#define DIR_SRTP_SENDER 1
#define ALGORITHM_AES_ICM_128 1
#define ALGORITHM_AES_ICM_256 5
#define ALGORITHM_AES_GCM_128 6
#define ALGORITHM_AES_GCM_256 7

static int warm = 0;                /* the level set by wc_set_warm once the layout is recognised */
static __thread volatile uint8_t warm_sink;  /* keeps the warming reads from being optimised away */

static inline const uint8_t *at(const void *block, int offset)
{
    return *(const uint8_t *const *)((const uint8_t *)block + offset);
}

static inline uint32_t u32_at(const void *block, int offset)
{
    return *(const uint32_t *)((const uint8_t *)block + offset);
}

/* The outbound stream of `ssrc` in session `srtp`, or NULL. */
static const uint8_t *find_stream(const void *srtp, uint32_t ssrc)
{
    const uint8_t *list = at(srtp, SRTP_CTX_STREAM_LIST);
    if (list == NULL)
        return NULL;
    const uint8_t *stream = at(list, STREAM_NEXT);
    for (int hops = 0; stream != NULL && hops < 64; hops++, stream = at(stream, STREAM_NEXT))
        if (u32_at(stream, STREAM_SSRC) == htonl(ssrc))
            return stream;
    return NULL;
}

/* The OpenSSL cipher context of a libsrtp AES-GCM or AES-ICM cipher, or NULL. */
static const uint8_t *evp_context(const uint8_t *cipher)
{
    const uint8_t *state = at(cipher, CIPHER_STATE);
    if (state == NULL)
        return NULL;
    int algorithm = (int)u32_at(cipher, CIPHER_ALGORITHM);
    if (algorithm == ALGORITHM_AES_GCM_128 || algorithm == ALGORITHM_AES_GCM_256) {
        int key_size = (int)u32_at(state, GCM_KEY_SIZE);
        return key_size == 16 || key_size == 32 ? at(state, GCM_EVP_CTX) : NULL;
    }
    if (algorithm >= ALGORITHM_AES_ICM_128 && algorithm <= ALGORITHM_AES_ICM_256) {
        int key_size = (int)u32_at(state, ICM_KEY_SIZE);
        return key_size == 16 || key_size == 24 || key_size == 32 ? at(state, ICM_EVP_CTX) : NULL;
    }
    return NULL;
}

/* OpenSSL's AES state behind the EVP_CIPHER_CTX of `cipher`, and its lines; NULL if the context does not read
 * as OpenSSL 3.5's (a provider cipher, fetched). */
static const uint8_t *aes_state(const uint8_t *cipher, int *lines)
{
    const uint8_t *evp = evp_context(cipher);
    if (evp == NULL || at(evp, EVP_CTX_CIPHER) == NULL || at(evp, EVP_CTX_FETCHED_CIPHER) != at(evp, EVP_CTX_CIPHER))
        return NULL;
    int algorithm = (int)u32_at(cipher, CIPHER_ALGORITHM);
    *lines = algorithm == ALGORITHM_AES_GCM_128 || algorithm == ALGORITHM_AES_GCM_256 ? AES_STATE_GCM_LINES
                                                                                      : AES_STATE_CTR_LINES;
    return at(evp, EVP_CTX_ALGCTX);
}

/* Whether `stream` reads as an outbound libsrtp 2.x stream with one master key. */
static int stream_plausible(const uint8_t *stream)
{
    uint32_t window = u32_at(stream, STREAM_RDBX_WINDOW_BITS);
    const uint8_t *keys = at(stream, STREAM_SESSION_KEYS);
    return u32_at(stream, STREAM_NUM_MASTER_KEYS) == 1 && u32_at(stream, STREAM_DIRECTION) == DIR_SRTP_SENDER
        && window >= 64 && window <= 0x8000 && window % 32 == 0 && at(stream, STREAM_RDBX_WORDS) != NULL
        && keys != NULL && at(keys, KEYS_RTP_CIPHER) != NULL && at(keys, KEYS_LIMIT) != NULL
        && evp_context(at(keys, KEYS_RTP_CIPHER)) != NULL;
}

/* 0 if session `srtp`, which has protected a packet with `ssrc`, is laid out as this file reads it. */
int wc_srtp_layout_check(const void *srtp, uint32_t ssrc)
{
    if (srtp == NULL)
        return -1;
    const uint8_t *stream = find_stream(srtp, ssrc);
    if (stream == NULL)
        return -2;
    return stream_plausible(stream) ? 0 : -3;
}

/* 0 if the cipher context of the stream of `ssrc` in `srtp` reads as OpenSSL 3.5's; -1 to -3 as above, -4 if
 * it does not. */
int wc_aes_state_check(const void *srtp, uint32_t ssrc)
{
    int code = wc_srtp_layout_check(srtp, ssrc);
    if (code != 0)
        return code;
    int lines = 0;
    const uint8_t *keys = at(find_stream(srtp, ssrc), STREAM_SESSION_KEYS);
    return aes_state(at(keys, KEYS_RTP_CIPHER), &lines) != NULL ? 0 : -4;
}

/* 0: no warming; 1: libsrtp's state; 2: and OpenSSL's AES state. */
void wc_set_warm(int level) { warm = level < 0 ? 0 : level > 2 ? 2 : level; }
int wc_target_size(void) { return (int)sizeof(struct wc_target); }
int wc_warm(void) { return warm; }

/* Fills t->srtp_state once the player's stream exists (after its first srtp_protect). */
static void find_srtp_state(struct wc_target *t)
{
    t->srtp_state_found = -1;
    const uint8_t *stream = find_stream(t->srtp, t->ssrc);
    if (stream == NULL || !stream_plausible(stream))
        return;
    const uint8_t *keys = at(stream, STREAM_SESSION_KEYS);
    const uint8_t *cipher = at(keys, KEYS_RTP_CIPHER);
    const uint8_t *auth = at(keys, KEYS_RTP_AUTH);
    const uint8_t *evp = evp_context(cipher);
    const void *lines[WC_STATE_LINES] = {  /* in the order srtp_protect first reads them */
        at(t->srtp, SRTP_CTX_STREAM_LIST) + STREAM_NEXT, stream, stream + STREAM_SIZE / 2, keys, keys + 64,
        cipher, at(cipher, CIPHER_STATE), evp, evp + EVP_CTX_KNOWN_SIZE - 8, at(stream, STREAM_RDBX_WORDS),
        at(keys, KEYS_LIMIT), auth, auth != NULL ? at(auth, AUTH_STATE) : NULL,
    };
    memcpy(t->srtp_state, lines, sizeof(lines));
    t->srtp_state_found = 1;
    if (warm >= 2) {
        int count = 0;
        const uint8_t *state = aes_state(cipher, &count);
        if (state != NULL) {
            t->aes_state = state;
            t->aes_state_lines = count;
        }
    }
}

static inline void warm_target(const struct wc_target *t)
{
    uint8_t sink = *(const volatile uint8_t *)t->srtp | *(const volatile uint8_t *)t->name;
    if (t->srtp_state_found > 0) {
        for (int k = 0; k < WC_STATE_LINES; k++)
            if (t->srtp_state[k] != NULL)
                sink |= *(const volatile uint8_t *)t->srtp_state[k];
        for (int k = 0; k < t->aes_state_lines; k++)
            sink |= ((const volatile uint8_t *)t->aes_state)[64 * k];
    }
    warm_sink = sink;
}

static int fanout_range(wc_sender *s, const wc_job *j)
{
    const int length = 12 + j->tail_len;
    const int64_t ext_seq = j->ext_seq;
    unsigned int queued = 0, total = 0;
    const int warming = warm;
    for (int i = 0; i < j->n; i++) {
        struct wc_target *t = j->targets[i];
        if (warming) {
            if (i + 4 < j->n) {  /* the target itself; two players on, what it points to */
                const volatile uint8_t *ahead = (const volatile uint8_t *)j->targets[i + 4];
                warm_sink = ahead[0] | ahead[64] | ahead[128];
            }
            if (i + 2 < j->n)
                warm_target(j->targets[i + 2]);
        }
        if (ext_seq < t->start_ext_seq)
            continue;  /* a late packet from before this player started */
        if (length > WC_MAX_PACKET) {
            t->dropped++;
            continue;
        }
        uint8_t *buf = s->slots + (size_t)queued * WC_SLOT;
        buf[0] = (uint8_t)j->b0;
        buf[1] = (uint8_t)(j->marker | t->payload_type);
        put16(buf + 2, (uint32_t)((ext_seq + t->seq_offset) & 0xFFFF));
        put32(buf + 4, (uint32_t)(((int64_t)j->ts + t->ts_offset) & 0xFFFFFFFF));
        put32(buf + 8, t->ssrc);
        memcpy(buf + 12, j->tail, (size_t)j->tail_len);
        int len = length;
        if (s->protect(t->srtp, buf, &len) != 0 || len <= 0 || len > WC_SLOT) {
            t->dropped++;
            continue;
        }
        t->packets++;
        t->octets += (uint64_t)j->payload_size;
        if (warming && t->srtp_state_found == 0)
            find_srtp_state(t);  /* its stream exists now: srtp_protect made it from the template */
        total += queue_slot(s, &queued, t->name, buf, len);
    }
    if (queued)
        flush(s, queued);
    return (int)(total + queued);
}

static void *helper_main(void *arg)
{
    wc_helper *h = arg;
    pthread_setname_np(pthread_self(), "wc-fanout");  /* named as the ingest threads are (ingest.c) */
    pthread_mutex_lock(&h->lock);
    for (;;) {
        while (!h->pending && !h->stop)
            pthread_cond_wait(&h->wake, &h->lock);
        if (h->stop)
            break;
        wc_job job = h->job;
        pthread_mutex_unlock(&h->lock);
        int result = fanout_range(h->sender, &job);
        pthread_mutex_lock(&h->lock);
        h->result = result;
        h->pending = 0;
        h->jobs++;
        pthread_cond_signal(&h->finished);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

/* Start the helper thread of a sender; 0 on success. */
int wc_sender_start_helper(wc_sender *s, int min_split)
{
    if (s == NULL || s->helper != NULL || min_split < 2)
        return -1;
    wc_helper *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    h->sender = wc_sender_new(s->fd, (int)s->capacity, (void *)s->protect);
    if (h->sender == NULL) {
        free(h);
        return -1;
    }
    h->min_split = min_split;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->wake, NULL);
    pthread_cond_init(&h->finished, NULL);
    if (pthread_create(&h->thread, NULL, helper_main, h) != 0) {
        wc_sender_free(h->sender);
        free(h);
        return -1;
    }
    s->helper = h;
    return 0;
}

static void helper_stop(wc_helper *h)
{
    pthread_mutex_lock(&h->lock);
    h->stop = 1;
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->thread, NULL);
    pthread_cond_destroy(&h->wake);
    pthread_cond_destroy(&h->finished);
    pthread_mutex_destroy(&h->lock);
    wc_sender_free(h->sender);
    free(h);
}

/* Send one packet (fixed header fields + `tail` = CSRCs, extension block and payload, already rewritten
 * for this group's layout) to `n` targets. Returns how many were queued for sending. */
int wc_fanout(wc_sender *s, struct wc_target *const *targets, int n, const uint8_t *tail, int tail_len,
              int b0, int marker, int64_t ext_seq, uint32_t ts, int payload_size)
{
    if (s == NULL || n <= 0 || tail_len < 0)
        return 0;
    wc_job job = {targets, n, tail, tail_len, b0, marker, ext_seq, ts, payload_size};
    wc_helper *h = s->helper;
    if (h == NULL || n < h->min_split)
        return fanout_range(s, &job);
    wc_job theirs = job;
    job.n = n / 2;
    theirs.targets = targets + job.n;
    theirs.n = n - job.n;
    pthread_mutex_lock(&h->lock);
    h->job = theirs;
    h->pending = 1;
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
    int mine = fanout_range(s, &job);
    pthread_mutex_lock(&h->lock);
    while (h->pending)
        pthread_cond_wait(&h->finished, &h->lock);
    int theirs_sent = h->result;
    pthread_mutex_unlock(&h->lock);
    return mine + theirs_sent;
}

/* --- Sender reports ------------------------------------------------------------------------------------
 *
 * Every player gets an RTCP sender report (RFC 3550 §6.4.1) per track about once a second, the tracks' SRs in one
 * compound packet. For a player on this core they are built here, for every player whose report is due, in one
 * call per take-in of the media port (reports.py): per player that is a few lines of this file instead of a
 * Python tick, two struct packs, an SRTCP protect through cffi and a sendto of its own (docs/per-packet-cost.md,
 * "Twelfth pass").
 * The counts come from the player's targets, which the fan-out keeps; the RTP time from a clock per track that
 * Python sets before the call (the publisher's RTP time at the call's instant: Producer.rtp_time_at), to which
 * each player adds its own timestamp offset. */
#define WC_REPORT_TRACKS 2
#define WC_SR_BYTES 28              /* one SR with no report blocks */

struct wc_clock {
    int32_t valid;                  /* 0: this track's publisher has no mapping yet, no SR for it */
    uint32_t rtp;
};

struct wc_reporter {
    void *srtp;                     /* the player's outbound session, as its targets' */
    const void *name;               /* its address, as its targets' */
    struct wc_target *targets[WC_REPORT_TRACKS];
    const struct wc_clock *clocks[WC_REPORT_TRACKS];
    int32_t tracks;
    uint32_t base_packets[WC_REPORT_TRACKS];  /* what Python sent before the target existed (a GOP replay) */
    uint32_t base_octets[WC_REPORT_TRACKS];
    int64_t due_ns;                 /* CLOCK_MONOTONIC, as Python's time.monotonic() */
    uint64_t rng;                   /* xorshift64 state for the next interval, seeded by Python, never 0 */
    uint64_t reports;               /* compound packets protected and queued */
};

static inline uint64_t xorshift64(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

/* Build, protect and send the compound SR of every reporter due by `due_by_ns`, and draw its next interval in
 * [min_ns, min_ns + span_ns). `ntp` is our NTP time now (64-bit), the clocks are set for the same instant.
 * The caller holds the media lock (an ingest thread may be protecting RTP with the same sessions). Returns how
 * many reports were queued for sending. */
int wc_sender_reports(wc_sender *s, struct wc_reporter *const *reporters, int n, int64_t now_ns, int64_t due_by_ns,
                      uint64_t ntp, void *protect_rtcp, int64_t min_ns, int64_t span_ns)
{
    if (s == NULL || protect_rtcp == NULL || span_ns <= 0)
        return 0;
    wc_protect_fn protect = (wc_protect_fn)protect_rtcp;
    unsigned int queued = 0, total = 0;
    for (int i = 0; i < n; i++) {
        struct wc_reporter *r = reporters[i];
        if (r->due_ns > due_by_ns)
            continue;
        r->due_ns = now_ns + min_ns + (int64_t)(xorshift64(&r->rng) % (uint64_t)span_ns);
        uint8_t *buf = s->slots + (size_t)queued * WC_SLOT;
        int len = 0;
        for (int k = 0; k < r->tracks && k < WC_REPORT_TRACKS; k++) {
            const struct wc_target *t = r->targets[k];
            const struct wc_clock *c = r->clocks[k];
            if (t == NULL || c == NULL || !c->valid)
                continue;
            uint8_t *sr = buf + len;
            sr[0] = 0x80;           /* V=2, no padding, no report blocks */
            sr[1] = 200;            /* SR */
            put16(sr + 2, WC_SR_BYTES / 4 - 1);
            put32(sr + 4, t->ssrc);
            put32(sr + 8, (uint32_t)(ntp >> 32));
            put32(sr + 12, (uint32_t)ntp);
            put32(sr + 16, (uint32_t)(((int64_t)c->rtp + t->ts_offset) & 0xFFFFFFFF));
            put32(sr + 20, (uint32_t)t->packets + r->base_packets[k]);
            put32(sr + 24, (uint32_t)t->octets + r->base_octets[k]);
            len += WC_SR_BYTES;
        }
        if (len == 0 || protect(r->srtp, buf, &len) != 0 || len <= 0 || len > WC_SLOT)
            continue;
        r->reports++;
        total += queue_slot(s, &queued, r->name, buf, len);
    }
    if (queued)
        flush(s, queued);
    return (int)(total + queued);
}

int wc_reporter_size(void) { return (int)sizeof(struct wc_reporter); }

/* The compiled ceiling of `webcall bench` (webcall_bench/ceiling.py): the least a server can do for one
 * publisher packet, in C — receive it from `fd`, `unprotect` it in place in `buf` (the publisher's inbound
 * libsrtp session), split off the 12-byte header and hand the rest to the very loop wc_fanout runs
 * (fanout_range). No ring, no keyframe probe, no extension rewriting, no Python between packets. Not used by
 * the server. Returns how many datagrams were queued, or -1 (nothing to read, or unprotect refused it). */
static int bench_forward(wc_sender *s, int fd, void *rx_srtp, void *unprotect, uint8_t *buf, int capacity,
                         struct wc_target *const *targets, int n, int flags)
{
    if (s == NULL || buf == NULL || capacity <= 12)
        return -1;
    ssize_t got = recv(fd, buf, (size_t)capacity, flags);
    if (got < 12)
        return -1;
    int len = (int)got;
    if (((wc_protect_fn)unprotect)(rx_srtp, buf, &len) != 0 || len < 12)
        return -1;
    wc_job job = {targets, n, buf + 12, len - 12, buf[0], buf[1] & 0x80,
                  (int64_t)(((uint32_t)buf[2] << 8) | buf[3]),
                  ((uint32_t)buf[4] << 24) | ((uint32_t)buf[5] << 16) | ((uint32_t)buf[6] << 8) | buf[7],
                  len - 12};
    return fanout_range(s, &job);
}

int wc_bench_forward(wc_sender *s, int fd, void *rx_srtp, void *unprotect, uint8_t *buf, int capacity,
                     struct wc_target *const *targets, int n)
{
    return bench_forward(s, fd, rx_srtp, unprotect, buf, capacity, targets, n, MSG_DONTWAIT);
}

/* The same, but waiting in recv(2) for the packet, as a server's receiving thread does: the thread sleeps until
 * the packet comes and is woken for it, and that wake-up is CPU the call-only figure above leaves out. */
int wc_bench_forward_wait(wc_sender *s, int fd, void *rx_srtp, void *unprotect, uint8_t *buf, int capacity,
                          struct wc_target *const *targets, int n)
{
    return bench_forward(s, fd, rx_srtp, unprotect, buf, capacity, targets, n, 0);
}
