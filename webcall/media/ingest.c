/* The ingest thread: a publisher's packets forwarded to its players before the event loop wakes.
 *
 * Each publisher on UDP gets a socket of its own: bound to the media port with SO_REUSEPORT and connected to
 * the publisher's address, so the kernel hands that address's datagrams to it and not to the shared socket
 * (a connected socket wins the lookup over the unconnected one). A thread per publisher blocks in recv(2) on
 * it; per datagram it does, in C, what the event loop did in Python before the fan-out: SRTP unprotect (the
 * publisher's inbound libsrtp session, pylibsrtp's), the sequence number's place (Producer.receive's test
 * for the newest packet), the header extensions of each player layout (ExtensionPlan.build), and
 * wc_fanout for every group of started players. Then the plaintext packet goes into a queue that Python
 * drains (ingest.py) for all the rest: the ring, keyframes, losses and NACKs, readers, statistics. The queue
 * wakes the event loop (an eventfd) at once for anything Python must act on — a packet this thread did not
 * forward, a gap, a track's first packet, STUN, DTLS — and otherwise only when the queue is half full or
 * a queued packet is `batch_ns` old: Python's own periodic tick takes the queue in before that (ingest.py), so
 * the event loop is not woken for the media at all, which is what its fixed cost per publisher packet was.
 *
 * A track is forwarded here only while Python has set groups for it (wc_ingest_groups): every player of the
 * track started and on the compiled core. Otherwise the packet is only unprotected and queued, and Python
 * forwards it as before.
 *
 * Locking: one process-wide recursive mutex (wc_media_lock) is held by this thread for each datagram, and by
 * Python around everything that uses a session this thread may use (players' outbound sessions: fan-outs,
 * sender reports, retransmissions; the publisher's inbound one) or the tables below. libsrtp sessions are not
 * thread-safe, and the fan-out core's send slots are one per port. The thread never takes the GIL.
 *
 * Lifetime: Python owns the sessions, targets, target arrays and addresses, and replaces or drops them only
 * under the lock. wc_ingest_stop clears `running` under the lock and shuts the socket down; from then on the
 * thread touches nothing of Python's, and it frees its own state when it leaves (it is detached: nobody
 * waits for it, so stopping never blocks the event loop, even with the lock held).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "fanout.h"

#define WC_INGEST_QUEUE 512     /* ≈ 4 s of a 600 kbit/s stream, half of it ≈ 2 s: Python drains it every 0.6–1.4 s */
#define WC_INGEST_ITEM 1536     /* one datagram */
#define WC_INGEST_TRACKS 8
#define WC_INGEST_GROUPS 8
#define WC_MAX_ELEMENTS 64      /* header extension elements mapped per packet (more: Python forwards it) */
#define WC_TAIL_ROOM 4096
#define RECV_TIMEOUT_MS 100     /* the longest recv(2) blocks: how late a batch's wake-up of Python may be */

enum { ITEM_FORWARDED = 1, ITEM_RTP = 2, ITEM_RTCP = 3, ITEM_OTHER = 4 };

/* A player layout's header extensions (ExtensionPlan): publisher id -> player id, and the player's mid. */
struct wc_plan {
    int32_t mapped;           /* the mapping is not empty */
    int32_t mid_id;           /* 0: no mid element */
    int32_t mid_len;
    uint8_t map[256];         /* 0: not forwarded */
    uint8_t mid[256];
};

struct group {
    struct wc_plan plan;
    struct wc_target *const *targets;
    int n;
};

struct track {
    uint32_t ssrc;
    int64_t highest;          /* as Producer.highest_seq and .cycles: -1 before the first packet */
    int64_t cycles;
    int ngroups;              /* player layouts this thread forwards to */
    int wake_each;            /* Python forwards to players itself, or has a reader that wants each packet at
                               * once (a relay, a feed): wake it per packet */
    struct group groups[WC_INGEST_GROUPS];
};

struct item {
    int32_t kind;
    int32_t len;
    int32_t wire_len;         /* as it arrived (SRTP), for the publisher's bitrate */
    int64_t arrival_ns;       /* CLOCK_MONOTONIC, the clock of Python's time.monotonic() */
    uint8_t data[WC_INGEST_ITEM];
};

typedef struct wc_ingest {
    int fd, evfd;
    void *rx;
    wc_srtp_fn unprotect, unprotect_rtcp;
    wc_sender *sender;
    int running;
    int ntracks;
    struct track tracks[WC_INGEST_TRACKS];
    struct item *queue;
    uint32_t head, tail;
    int64_t batch_ns;
    int64_t unwoken_since;    /* arrival of the oldest item Python was not woken for (0: none) */
    uint8_t tails[WC_INGEST_GROUPS][WC_TAIL_ROOM];  /* each group's CSRCs, extension block and payload */
    int wake_pending;         /* the eventfd was written since Python last drained */
    /* counters, read by Python under the lock */
    uint64_t datagrams, forwarded, queued, overflow, srtp_errors, wakes;
    /* every 64th forward is timed (FanoutCost in Python): calls, players, wall and thread CPU time */
    uint64_t timed, timed_players, timed_wall_ns, timed_cpu_ns;
} wc_ingest;

static pthread_mutex_t media_lock;
static pthread_once_t media_lock_once = PTHREAD_ONCE_INIT;

static void media_lock_init(void)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);  /* Python's locked sections nest */
    pthread_mutex_init(&media_lock, &attr);
    pthread_mutexattr_destroy(&attr);
}

void wc_media_lock(void)
{
    pthread_once(&media_lock_once, media_lock_init);
    pthread_mutex_lock(&media_lock);
}

void wc_media_unlock(void) { pthread_mutex_unlock(&media_lock); }

static int64_t clock_ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline uint32_t get16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* rtp.py's split(): 0 and the three offsets, or -1 for a packet it would call malformed. */
int wc_rtp_split(const uint8_t *p, int length, int *csrc_end, int *ext_end, int *end)
{
    if (length < 12)
        return -1;
    int pos = 12 + 4 * (p[0] & 0x0F);
    int ext = pos;
    if (p[0] & 0x10) {
        if (pos + 4 > length)
            return -1;
        ext = pos + 4 + 4 * (int)get16(p + pos + 2);
    }
    int stop = length;
    if (p[0] & 0x20)
        stop -= p[length - 1];
    if (ext > stop)
        return -1;
    *csrc_end = pos;
    *ext_end = ext;
    *end = stop;
    return 0;
}

/* build_extensions() of rtp.py over `n` elements (ids, values): the block with its 4-byte header, into
 * `out` (room for `room` bytes). Its length, or -1 if it does not fit. */
static int build_block(int n, const int *ids, const uint8_t *const *values, const int *lengths, uint8_t *out,
                       int room)
{
    if (n == 0)
        return 0;
    int one_byte = 1;
    for (int i = 0; i < n; i++)
        if (!(ids[i] > 0 && ids[i] < 15 && lengths[i] > 0 && lengths[i] <= 16))
            one_byte = 0;
    int pos = 4;
    for (int i = 0; i < n; i++) {
        int need = (one_byte ? 1 : 2) + lengths[i];
        if (pos + need > room)
            return -1;
        if (one_byte) {
            out[pos++] = (uint8_t)((ids[i] << 4) | (lengths[i] - 1));
        } else {
            out[pos++] = (uint8_t)ids[i];
            out[pos++] = (uint8_t)lengths[i];
        }
        memcpy(out + pos, values[i], (size_t)lengths[i]);
        pos += lengths[i];
    }
    while ((pos - 4) % 4) {
        if (pos >= room)
            return -1;
        out[pos++] = 0;
    }
    uint32_t profile = one_byte ? 0xBEDE : 0x1000, words = (uint32_t)(pos - 4) / 4;
    if (words > 0xFFFF)
        return -1;
    out[0] = (uint8_t)(profile >> 8);
    out[1] = (uint8_t)profile;
    out[2] = (uint8_t)(words >> 8);
    out[3] = (uint8_t)words;
    return pos;
}

/* ExtensionPlan.build(parse_extensions(packet)) for one plan: the player's extension block into `out`. Its
 * length (0: none), or -1 when it cannot be built here (too many elements, no room): Python forwards it. */
int wc_plan_build(const struct wc_plan *plan, const uint8_t *p, int csrc_end, int ext_end, uint8_t *out,
                  int room)
{
    int ids[WC_MAX_ELEMENTS + 1], lengths[WC_MAX_ELEMENTS + 1];
    const uint8_t *values[WC_MAX_ELEMENTS + 1];
    int n = 0;
    if (ext_end > csrc_end && plan->mapped) {
        uint32_t profile = get16(p + csrc_end);
        int two = (profile & 0xFFF0) == 0x1000;  /* RFC 8285 §4.3: a two-byte header per element, else §4.2 */
        int pos = csrc_end + 4;
        while ((profile == 0xBEDE || two) && pos + two < ext_end) {
            if (p[pos] == 0) {  /* padding, in either form */
                pos++;
                continue;
            }
            int id = two ? p[pos] : p[pos] >> 4, head = two ? 2 : 1;
            int size = two ? p[pos + 1] : (p[pos] & 0x0F) + 1;
            if ((!two && id == 15) || pos + head + size > ext_end)
                break;
            if (plan->map[id]) {
                if (n == WC_MAX_ELEMENTS)
                    return -1;
                ids[n] = plan->map[id];
                values[n] = p + pos + head;
                lengths[n++] = size;
            }
            pos += head + size;
        }
    }
    if (plan->mid_id) {  /* the mid goes last, alone when nothing else maps (ExtensionPlan._mid_only) */
        ids[n] = plan->mid_id;
        values[n] = plan->mid;
        lengths[n++] = plan->mid_len;
    }
    return build_block(n, ids, values, lengths, out, room);
}

static void wake(wc_ingest *g)
{
    uint64_t one = 1;
    if (write(g->evfd, &one, sizeof(one)) == (ssize_t)sizeof(one))
        g->wakes++;
    g->wake_pending = 1;
    g->unwoken_since = 0;
}

static void enqueue(wc_ingest *g, int kind, const uint8_t *data, int len, int wire_len, int64_t arrival,
                    int urgent)
{
    if (g->head - g->tail >= WC_INGEST_QUEUE) {  /* Python is behind by seconds: its view loses this one */
        g->overflow++;
        if (!g->wake_pending)
            wake(g);
        return;
    }
    struct item *it = &g->queue[g->head % WC_INGEST_QUEUE];
    it->kind = kind;
    it->len = len;
    it->wire_len = wire_len;
    it->arrival_ns = arrival;
    memcpy(it->data, data, (size_t)len);
    g->head++;
    g->queued++;
    if (g->wake_pending)
        return;  /* Python is draining, or about to: it takes everything */
    if (g->unwoken_since == 0)
        g->unwoken_since = arrival;
    if (urgent || arrival - g->unwoken_since >= g->batch_ns || g->head - g->tail >= WC_INGEST_QUEUE / 2)
        wake(g);
}

/* Forward a newest packet of a track with groups to every group. 0, or -1 if a group's extensions could not
 * be built (then nothing was sent, and Python forwards it). */
static int forward(wc_ingest *g, struct track *t, const uint8_t *p, int len, int csrc_end, int ext_end,
                   int end, int64_t ext_seq)
{
    int csrc = csrc_end - 12, payload = len - ext_end;
    int sample = (g->forwarded & 63) == 0;
    int64_t wall = sample ? clock_ns(CLOCK_MONOTONIC) : 0, cpu = sample ? clock_ns(CLOCK_THREAD_CPUTIME_ID) : 0;
    int players = 0;
    /* Every group's tail first: if one cannot be built, nothing is sent and Python forwards the packet. */
    int lengths[WC_INGEST_GROUPS], extended[WC_INGEST_GROUPS];
    for (int i = 0; i < t->ngroups; i++) {
        uint8_t *out = g->tails[i];
        int ext = wc_plan_build(&t->groups[i].plan, p, csrc_end, ext_end, out + csrc,
                                WC_TAIL_ROOM - csrc - payload);
        if (ext < 0)
            return -1;
        memcpy(out, p + 12, (size_t)csrc);
        memcpy(out + csrc + ext, p + ext_end, (size_t)payload);
        lengths[i] = csrc + ext + payload;
        extended[i] = ext > 0;
    }
    uint32_t ts = get32(p + 4);
    int b0 = p[0] & 0xEF, marker = p[1] & 0x80;
    for (int i = 0; i < t->ngroups; i++) {
        const struct group *grp = &t->groups[i];
        wc_fanout(g->sender, grp->targets, grp->n, g->tails[i], lengths[i], extended[i] ? b0 | 0x10 : b0, marker,
                  ext_seq, ts, end - ext_end);
        players += grp->n;
    }
    g->forwarded++;
    if (sample) {
        g->timed++;
        g->timed_players += (uint64_t)players;
        g->timed_wall_ns += (uint64_t)(clock_ns(CLOCK_MONOTONIC) - wall);
        g->timed_cpu_ns += (uint64_t)(clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu);
    }
    return 0;
}

static struct track *find_track(wc_ingest *g, uint32_t ssrc)
{
    for (int i = 0; i < g->ntracks; i++)
        if (g->tracks[i].ssrc == ssrc)
            return &g->tracks[i];
    return NULL;
}

/* One SRTP packet that is RTP (not RTCP), unprotected in place (`wire_len`: before). */
static void on_rtp(wc_ingest *g, uint8_t *p, int len, int wire_len, int64_t arrival)
{
    struct track *t = find_track(g, get32(p + 8));
    if (t == NULL) {  /* RTX, or an SSRC Python has not told us about */
        enqueue(g, ITEM_RTP, p, len, wire_len, arrival, 1);
        return;
    }
    int64_t seq = get16(p + 2), ext_seq = -1;
    int news = 0;  /* the track's first packet (the publication starts) or a gap (Python answers with a NACK) */
    if (t->highest < 0) {
        t->highest = seq;
        ext_seq = seq;
        news = 1;
    } else {
        int64_t delta = (seq - t->highest) & 0xFFFF;
        if (delta != 0 && delta < 0x8000) {  /* the newest: what Producer.receive always delivers */
            news = delta > 1;
            if (seq < t->highest)
                t->cycles += 0x10000;
            t->highest = seq;
            ext_seq = t->cycles + seq;
        }
    }
    int csrc_end, ext_end, end;
    int forwarded = ext_seq >= 0 && t->ngroups > 0 && wc_rtp_split(p, len, &csrc_end, &ext_end, &end) == 0 &&
                    forward(g, t, p, len, csrc_end, ext_end, end, ext_seq) == 0;
    /* Python is woken now for news, and for a packet for players that this thread did not forward (Python's to
     * forward). Otherwise (a recording, say, or players all served here) the port's tick takes it in. */
    int urgent = news || t->wake_each || (!forwarded && t->ngroups > 0);
    enqueue(g, forwarded ? ITEM_FORWARDED : ITEM_RTP, p, len, wire_len, arrival, urgent);
}

static void on_datagram(wc_ingest *g, uint8_t *p, int len)
{
    int64_t arrival = clock_ns(CLOCK_MONOTONIC);
    g->datagrams++;
    if (len >= 12 && p[0] > 127 && p[0] < 192) {  /* RFC 7983: RTP or RTCP */
        int rtcp = p[1] >= 192 && p[1] <= 223;
        int plain = len;
        if ((rtcp ? g->unprotect_rtcp : g->unprotect)(g->rx, p, &plain) != 0 || plain < 8) {
            g->srtp_errors++;
            return;
        }
        if (rtcp)  /* a publisher's RTCP (sender reports: lip sync) can wait for the port's tick */
            enqueue(g, ITEM_RTCP, p, plain, len, arrival, 0);
        else if (plain >= 12)
            on_rtp(g, p, plain, len, arrival);
        return;
    }
    enqueue(g, ITEM_OTHER, p, len, len, arrival, 1);  /* STUN (consent), DTLS (a close alert), anything else */
}

static void *ingest_main(void *arg)
{
    wc_ingest *g = arg;
    uint8_t buf[WC_INGEST_ITEM];
    /* Its name is what top -H, /proc/<pid>/task/<tid>/comm and webcall bench's per-thread CPU show. */
    pthread_setname_np(pthread_self(), "wc-ingest");
    for (;;) {
        /* Items Python was not woken for wait at most batch_ns (+ RECV_TIMEOUT_MS), even if no packet follows. */
        wc_media_lock();
        if (!g->running) {
            wc_media_unlock();
            break;
        }
        if (g->unwoken_since != 0 && clock_ns(CLOCK_MONOTONIC) - g->unwoken_since >= g->batch_ns)
            wake(g);
        wc_media_unlock();
        /* One system call per wake-up, as the compiled ceiling's loop makes: recv blocks, for RECV_TIMEOUT_MS at
         * most (SO_RCVTIMEO), rather than poll(2) with the batch's deadline and then recv. */
        ssize_t got = recv(g->fd, buf, sizeof(buf) - 64, 0);  /* room for libsrtp's in-place work */
        wc_media_lock();
        if (!g->running) {
            wc_media_unlock();
            break;
        }
        if (got > 0)  /* (an error, an ICMP unreachable say, or a zero-length datagram: nothing to do) */
            on_datagram(g, buf, (int)got);
        wc_media_unlock();
    }
    close(g->fd);
    close(g->evfd);
    free(g->queue);
    free(g);
    return NULL;
}

/* Start the thread on `fd` (the connected socket; it is the thread's from now on and closed when it leaves).
 * NULL on failure (then `fd` is still the caller's). */
wc_ingest *wc_ingest_start(int fd, wc_sender *sender, void *rx, void *unprotect, void *unprotect_rtcp,
                           int batch_us)
{
    if (sender == NULL || rx == NULL || unprotect == NULL || unprotect_rtcp == NULL)
        return NULL;
    struct timeval wait = {0, RECV_TIMEOUT_MS * 1000};  /* the thread's recv returns at least this often */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait)) != 0)
        return NULL;
    wc_ingest *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->queue = calloc(WC_INGEST_QUEUE, sizeof(struct item));
    g->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (g->queue == NULL || g->evfd < 0) {
        if (g->evfd >= 0)
            close(g->evfd);
        free(g->queue);
        free(g);
        return NULL;
    }
    g->fd = fd;
    g->rx = rx;
    g->unprotect = (wc_srtp_fn)unprotect;
    g->unprotect_rtcp = (wc_srtp_fn)unprotect_rtcp;
    g->sender = sender;
    g->batch_ns = (int64_t)batch_us * 1000;
    g->running = 1;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int failed = pthread_create(&thread, &attr, ingest_main, g);
    pthread_attr_destroy(&attr);
    if (failed) {
        close(g->evfd);
        free(g->queue);
        free(g);
        return NULL;
    }
    return g;
}

/* Stop: after this returns the thread uses nothing of the caller's; it frees itself (and the socket). */
void wc_ingest_stop(wc_ingest *g)
{
    wc_media_lock();
    g->running = 0;
    shutdown(g->fd, SHUT_RDWR);  /* wakes its recv */
    wc_media_unlock();
}

int wc_ingest_eventfd(const wc_ingest *g) { return g->evfd; }

/* Tell the thread about a track (or seed it again): its SSRC and Python's sequence state. */
int wc_ingest_track(wc_ingest *g, uint32_t ssrc, int64_t highest, int64_t cycles)
{
    wc_media_lock();
    struct track *t = find_track(g, ssrc);
    if (t == NULL && g->ntracks < WC_INGEST_TRACKS) {
        t = &g->tracks[g->ntracks++];
        memset(t, 0, sizeof(*t));
        t->ssrc = ssrc;
    }
    if (t != NULL) {
        t->highest = highest;
        t->cycles = cycles;
    }
    wc_media_unlock();
    return t != NULL ? 0 : -1;
}

/* The groups this thread forwards a track to (n = 0: none), and whether every packet wakes Python. Python keeps
 * `targets[i]` and what they point to alive until it replaces them here. */
int wc_ingest_groups(wc_ingest *g, uint32_t ssrc, int n, const struct wc_plan *const *plans,
                     struct wc_target *const *const *targets, const int *counts, int wake_each)
{
    if (n < 0 || n > WC_INGEST_GROUPS)
        return -1;
    wc_media_lock();
    struct track *t = find_track(g, ssrc);
    if (t != NULL) {
        for (int i = 0; i < n; i++) {
            t->groups[i].plan = *plans[i];
            t->groups[i].targets = targets[i];
            t->groups[i].n = counts[i];
        }
        t->ngroups = n;
        t->wake_each = wake_each;
    }
    wc_media_unlock();
    return t != NULL ? 0 : -1;
}

/* Python: the next queued item (its data into `buf`, WC_INGEST_ITEM bytes); its length, or -1 when empty.
 * `meta` gets its kind and its length as it arrived. */
int wc_ingest_take(wc_ingest *g, uint8_t *buf, int *meta, int64_t *arrival_ns)
{
    wc_media_lock();
    int len = -1;
    if (g->tail != g->head) {
        const struct item *it = &g->queue[g->tail % WC_INGEST_QUEUE];
        memcpy(buf, it->data, (size_t)it->len);
        len = it->len;
        meta[0] = it->kind;
        meta[1] = it->wire_len;
        *arrival_ns = it->arrival_ns;
        g->tail++;
    } else {
        g->wake_pending = 0;  /* drained: the next packet may wake Python again */
        g->unwoken_since = 0;
    }
    wc_media_unlock();
    return len;
}

/* Python: how many items wait in the queue (what Python has not taken in yet). */
int wc_ingest_pending(wc_ingest *g)
{
    wc_media_lock();
    int n = (int)(g->head - g->tail);
    wc_media_unlock();
    return n;
}

/* Counters: datagrams, forwarded, queued, overflow, srtp_errors, wakes, timed, timed_players, timed_wall_ns,
 * timed_cpu_ns (10 values). */
void wc_ingest_counters(wc_ingest *g, uint64_t *out)
{
    wc_media_lock();
    uint64_t values[10] = {g->datagrams, g->forwarded, g->queued, g->overflow, g->srtp_errors, g->wakes,
                           g->timed, g->timed_players, g->timed_wall_ns, g->timed_cpu_ns};
    memcpy(out, values, sizeof(values));
    wc_media_unlock();
}

int wc_plan_size(void) { return (int)sizeof(struct wc_plan); }
int wc_ingest_queue_size(void) { return WC_INGEST_QUEUE; }
