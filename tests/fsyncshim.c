/* fsyncshim: an LD_PRELOAD library that logs what a process does to the files of one
 * directory, so that a test can work out what a power loss would have left of them
 * (tests/rocks_powerloss.py replays the log; see there).
 *
 * Environment:
 *   FSYNCSHIM_DIR      the directory watched (an absolute path, no trailing slash); only
 *                      paths under it and file descriptors opened on them are logged
 *   FSYNCSHIM_LOG      the log file (one line per event, each written with one O_APPEND
 *                      write, so lines of different threads never mix)
 *   FSYNCSHIM_SAVE     a directory on the same file system: a file about to lose its name
 *                      (unlink, or the target of a rename) is hard-linked here first, since
 *                      a loss could bring its name back
 *   FSYNCSHIM_KILL_AT  if set to N: at the N-th logged event (1-based), the process SIGKILLs
 *                      itself before doing it: power lost in the middle of anything
 *
 * Events (fd: a descriptor number; sizes and offsets in bytes):
 *   C fd path          open created path        O fd kind path   open of an existing one
 *                                                                 (kind: f file, d directory,
 *                                                                  t file truncated by O_TRUNC)
 *   W fd offset len    a write                  T fd size        ftruncate
 *   S fd size          fsync/fdatasync returned; size: the file's size before the call
 *   X fd               close                    R from to        rename done
 *   K path saved       path's file hard-linked  U path           unlink done
 *                      to saved (before R or U)
 * A sync is logged after it returns (a sync cut short by the loss made nothing durable), a
 * name's creation right after the open (a file created just before the loss, with no line,
 * was never synced: the replay drops it), the rest before it happens: a line in the log
 * never claims more durability than the process had.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536

static char watched[4096];
static size_t watched_len;
static int log_fd = -1;
static const char *save_dir;
static long kill_at = -1;
static long events;
static unsigned long saves;
static unsigned char tracked[MAX_FD];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_close)(int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_rename)(const char *, const char *);
static int (*real_unlink)(const char *);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);

__attribute__((constructor)) static void shim_init(void) {
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_close = dlsym(RTLD_NEXT, "close");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_rename = dlsym(RTLD_NEXT, "rename");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_writev = dlsym(RTLD_NEXT, "writev");
    const char *dir = getenv("FSYNCSHIM_DIR");
    const char *log = getenv("FSYNCSHIM_LOG");
    save_dir = getenv("FSYNCSHIM_SAVE");
    const char *kill = getenv("FSYNCSHIM_KILL_AT");
    if (!dir || !log || !save_dir || strlen(dir) >= sizeof(watched))
        return;  /* nothing watched: a plain pass-through */
    strcpy(watched, dir);
    watched_len = strlen(watched);
    log_fd = real_open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (kill && *kill)
        kill_at = atol(kill);
}

static int is_watched(const char *path) {
    return log_fd >= 0 && path && strncmp(path, watched, watched_len) == 0
        && (path[watched_len] == '/' || path[watched_len] == '\0');
}

static int fd_tracked(int fd) {
    return log_fd >= 0 && fd >= 0 && fd < MAX_FD && tracked[fd];
}

/* Count one event (maybe the one power is lost at) and log its line. */
static void emit(const char *format, ...) {
    char line[8400];
    va_list args;
    va_start(args, format);
    int length = vsnprintf(line, sizeof(line) - 1, format, args);
    va_end(args);
    if (length < 0 || length >= (int)sizeof(line) - 1)
        abort();
    line[length++] = '\n';
    pthread_mutex_lock(&lock);
    events++;
    if (events == kill_at) {
        real_write(log_fd, "! power lost\n", 13);
        raise(SIGKILL);
    }
    real_write(log_fd, line, (size_t)length);
    pthread_mutex_unlock(&lock);
}

/* Before ``path`` loses its name: a hard link to its file, in case a loss restores it. */
static void save(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return;
    char saved[4200];
    pthread_mutex_lock(&lock);
    unsigned long number = ++saves;
    pthread_mutex_unlock(&lock);
    snprintf(saved, sizeof(saved), "%s/%lu", save_dir, number);
    if (link(path, saved) == 0)
        emit("K %s %s", path, saved);
}

static int opened(int (*opener)(const char *, int, ...), const char *path, int flags,
                  mode_t mode) {
    if (!is_watched(path))
        return opener(path, flags, mode);
    struct stat st;
    int existed = lstat(path, &st) == 0;
    int is_dir = existed && S_ISDIR(st.st_mode);
    int fd = opener(path, flags, mode);
    if (fd < 0 || fd >= MAX_FD)
        return fd;
    tracked[fd] = 1;
    if (!existed)
        emit("C %d %s", fd, path);
    else
        emit("O %d %c %s", fd, is_dir ? 'd' : (flags & O_TRUNC) ? 't' : 'f', path);
    return fd;
}

int open(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list args;
        va_start(args, flags);
        mode = va_arg(args, mode_t);
        va_end(args);
    }
    return opened(real_open, path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list args;
        va_start(args, flags);
        mode = va_arg(args, mode_t);
        va_end(args);
    }
    return opened(real_open64, path, flags, mode);
}

int close(int fd) {
    if (fd_tracked(fd)) {
        emit("X %d", fd);
        tracked[fd] = 0;
    }
    return real_close(fd);
}

static int synced(int (*syncer)(int), int fd) {
    if (!fd_tracked(fd))
        return syncer(fd);
    struct stat st;
    off_t size = fstat(fd, &st) == 0 ? st.st_size : -1;
    int result = syncer(fd);
    if (result == 0)
        emit("S %d %lld", fd, (long long)size);
    return result;
}

int fsync(int fd) { return synced(real_fsync, fd); }
int fdatasync(int fd) { return synced(real_fdatasync, fd); }

int ftruncate(int fd, off_t size) {
    if (fd_tracked(fd))
        emit("T %d %lld", fd, (long long)size);
    return real_ftruncate(fd, size);
}

int rename(const char *from, const char *to) {
    if (!is_watched(from) && !is_watched(to))
        return real_rename(from, to);
    save(to);
    int result = real_rename(from, to);
    if (result == 0)
        emit("R %s %s", from, to);
    return result;
}

int unlink(const char *path) {
    if (!is_watched(path))
        return real_unlink(path);
    save(path);
    int result = real_unlink(path);
    if (result == 0)
        emit("U %s", path);
    return result;
}

ssize_t write(int fd, const void *data, size_t count) {
    if (fd_tracked(fd) && count)
        emit("W %d %lld %zu", fd, (long long)lseek(fd, 0, SEEK_CUR), count);
    return real_write(fd, data, count);
}

ssize_t pwrite(int fd, const void *data, size_t count, off_t offset) {
    if (fd_tracked(fd) && count)
        emit("W %d %lld %zu", fd, (long long)offset, count);
    return real_pwrite(fd, data, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    if (fd_tracked(fd)) {
        size_t count = 0;
        for (int i = 0; i < iovcnt; i++)
            count += iov[i].iov_len;
        if (count)
            emit("W %d %lld %zu", fd, (long long)lseek(fd, 0, SEEK_CUR), count);
    }
    return real_writev(fd, iov, iovcnt);
}
