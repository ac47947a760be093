# ctarget remote agent: runs on the machine a remotevm target names, called over SSH by the
# plugin (see plugins/remotevm/README.md and the protocol in its comments below).
# Python 3.6+, standard library only.  Errors: one line on stderr, nonzero exit:
# 2 usage, 3 bad input, 4 missing blobs, 5 missing tool, 6 not found, 1 other.
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

CHUNK = 1 << 20
ROOT = None
UMASK = os.umask(0o022)
os.umask(UMASK)


class Fail(Exception):
    def __init__(self, code, msg):
        Exception.__init__(self, msg)
        self.code = code


def die(code, msg):
    raise Fail(code, msg)


ID_RE = re.compile(r'^[0-9A-Za-z._-]{1,200}$').match
SHA_RE = re.compile(r'^[0-9a-f]{64}$').match  # called for every blob: compiled once


def ok_id(s, what):
    if not ID_RE(s) or s in ('.', '..'):
        die(2, 'bad %s %r' % (what, s))
    return s


def ok_sha(s):
    if not SHA_RE(s):
        die(2, 'bad sha256 %r' % s)
    return s


def mkdirs(p):
    os.makedirs(p, 0o700, exist_ok=True)


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def top_mkdirs(p):
    """A directory whose subdirectories hold many new files (runs/, blobs/): made the top of
    a hierarchy (chattr +T) when created, so that ext4 spreads its subdirectories over block
    groups and a new run's files do not queue behind the inodes freed by old ones.  Best
    effort: other file systems refuse the flag."""
    if os.path.isdir(p):
        return
    mkdirs(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        flags = int.from_bytes(buf[:4], sys.byteorder)
        if not flags & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, (flags | FS_TOPDIR_FL).to_bytes(4, sys.byteorder) +
                        bytes(4))
    except (OSError, ValueError):
        pass
    finally:
        os.close(fd)


def blob_path(sha):
    return os.path.join(ROOT, 'blobs', sha[:2], sha)


def run_dir(rid):
    return os.path.join(ROOT, 'runs', ok_id(rid, 'run id'))


def write_all(fd, b):
    view = memoryview(b)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_atomic(path, data):
    tmp = '%s.tmp%d' % (path, os.getpid())
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def read_json(path):
    try:
        with open(path, 'rb') as f:
            return json.loads(f.read().decode('utf-8'))
    except (OSError, ValueError):
        return None


def out_json(o):
    sys.stdout.write(json.dumps(o) + '\n')
    sys.stdout.flush()


# ---- manifests ------------------------------------------------------------------------------

PATH_PRE = b'{"path": "'
UNESC = {ord('"'): b'"', ord('\\'): b'\\', ord('b'): b'\b', ord('f'): b'\f',
         ord('n'): b'\n', ord('r'): b'\r', ord('t'): b'\t', ord('/'): b'/'}


def path_literal(line):
    if not line.startswith(PATH_PRE):
        die(3, 'not a manifest entry: %r' % line[:80])
    i = len(PATH_PRE)
    n = len(line)
    while i < n and line[i] != 0x22:
        i += 2 if line[i] == 0x5c else 1
    if i >= n:
        die(3, 'not a manifest entry: %r' % line[:80])
    return line[len(PATH_PRE) - 1:i + 1]


def decode_literal(lit):
    body = lit[1:-1]
    if b'\\' not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != 0x5c:
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e == ord('u'):
            out += chr(int(body[i + 2:i + 6], 16)).encode('utf-8', 'surrogateescape') \
                if int(body[i + 2:i + 6], 16) >= 0x80 else bytes([int(body[i + 2:i + 6], 16)])
            i += 6
        else:
            out += UNESC.get(e, bytes([e]))
            i += 2
    return bytes(out)


def parse_entry(line):
    try:
        e = json.loads(line.decode('utf-8', 'surrogateescape'))
    except ValueError:
        die(3, 'bad manifest line %r' % line[:80])
    if not isinstance(e, dict) or not isinstance(e.get('path'), str):
        die(3, 'bad manifest line %r' % line[:80])
    e['bpath'] = os.fsencode(e['path'])
    return e


def parse_entries(lines):
    """Every line's entry, parsed as one JSON array (10,000 json.loads calls cost a tenth of
    a second); any doubt (a line that is not one object) and each line is parsed alone, so
    the error names it."""
    try:
        text = b'[' + b','.join(l.rstrip(b'\n') for l in lines) + b']'
        es = json.loads(text.decode('utf-8', 'surrogateescape'))
    except ValueError:
        es = None
    if not isinstance(es, list) or len(es) != len(lines) or \
            not all(isinstance(e, dict) and isinstance(e.get('path'), str) for e in es):
        return [parse_entry(l) for l in lines]
    for e in es:
        e['bpath'] = os.fsencode(e['path'])
    return es


def check_path(p):
    if not p or p.startswith(b'/') or b'\0' in p:
        die(3, 'refused path %r: absolute or empty' % p)
    for c in p.split(b'/'):
        if c in (b'', b'.', b'..'):
            die(3, 'refused path %r: empty, "." or ".." component' % p)


def entry_lines(text):
    return [l + b'\n' for l in text.split(b'\n') if l]


# ---- verbs ----------------------------------------------------------------------------------

def v_facts(args):
    engine = args[0] if args else 'docker'
    osr = {}
    try:
        with open('/etc/os-release') as f:
            for l in f:
                if '=' in l:
                    k, v = l.rstrip('\n').split('=', 1)
                    osr[k] = v.strip('"')
    except OSError:
        pass
    u = os.uname()
    mem = 0
    try:
        with open('/proc/meminfo') as f:
            for l in f:
                if l.startswith('MemTotal:'):
                    mem = int(l.split()[1]) * 1024
    except OSError:
        pass
    docker = shutil.which(engine) is not None
    running = False
    if docker:
        try:
            running = subprocess.run([engine, 'info'], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, timeout=5).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            running = False
    gpus = []
    if shutil.which('nvidia-smi'):
        try:
            r = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version',
                                '--format=csv,noheader,nounits'], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, timeout=5)
            for l in r.stdout.decode('utf-8', 'replace').splitlines():
                p = [x.strip() for x in l.split(',')]
                if len(p) >= 3:
                    try:
                        m = int(float(p[1]))
                    except ValueError:
                        m = 0
                    gpus.append({'name': p[0], 'memory_mib': m, 'driver': p[2]})
        except (OSError, subprocess.TimeoutExpired):
            pass
    conda = shutil.which('conda') or shutil.which('mamba')
    out_json({'os_name': osr.get('PRETTY_NAME', u.sysname), 'os_id': osr.get('ID', ''),
              'os_version': osr.get('VERSION_ID', ''), 'system': u.sysname,
              'kernel': u.release, 'arch': u.machine,
              'python3_version': '%d.%d.%d' % sys.version_info[:3],
              'python3_path': sys.executable,
              'cpus': os.cpu_count() or 0, 'memory_bytes': mem, 'docker': docker,
              'docker_running': running, 'gpus': gpus, 'gpu_count': len(gpus),
              'conda': conda, 'root': ROOT})


def v_begin(args):
    sid = ok_sha(args[0])
    adopt_waiting()
    d = os.path.join(ROOT, 'snapshots')
    have = os.path.exists(os.path.join(d, sid + '.jsonl'))
    recent = []
    try:
        for n in os.listdir(d):
            if n.endswith('.jsonl') and len(n) == 70 and n[:64] != sid:
                try:
                    recent.append((os.stat(os.path.join(d, n)).st_mtime, n[:64]))
                except OSError:
                    pass
    except OSError:
        pass
    recent.sort(reverse=True)
    # an empty cache lacks everything: the plugin then need not ask which blobs are missing
    try:
        empty = not os.listdir(os.path.join(ROOT, 'blobs'))
    except OSError:
        empty = True
    out_json({'have': have, 'recent': [s for _, s in recent[:8]], 'empty': empty})


def v_missing(args):
    out = []
    for l in sys.stdin.buffer.read().split(b'\n'):
        p = l.split()
        if len(p) != 2:
            continue
        sha = ok_sha(p[0].decode())
        try:
            if os.stat(blob_path(sha)).st_size == int(p[1]):
                continue
        except OSError:
            pass
        out.append(sha)
    sys.stdout.write(''.join(s + '\n' for s in out))


class TarIn(object):
    """Streaming ustar/pax reader: (name, type, size), then the entry's data in views.  The
    input is read in large pieces into one buffer: headers, padding and small files come out
    of it without a read of their own (10,000 files were 30,000 reads)."""

    BUF = 4 << 20
    PIECE = 1 << 18

    def __init__(self, f):
        self.f = f
        self.buf = bytearray(self.BUF)
        self.mv = memoryview(self.buf)
        self.pos = self.end = 0

    def more(self, need):
        """Buffer at least `need` (<= BUF) bytes from pos; False when the input ends first."""
        if self.end - self.pos >= need:
            return True
        if self.pos:  # keep what is left at the front
            left = bytes(self.mv[self.pos:self.end])
            self.buf[:len(left)] = left
            self.pos, self.end = 0, len(left)
        while self.end - self.pos < need:
            k = self.f.readinto(self.mv[self.end:min(self.BUF, self.end + self.PIECE)])
            if not k:
                return False
            self.end += k
        return True

    def take(self, n):
        if not self.more(n):
            die(3, 'the upload ended early (connection dropped?)')
        b = self.mv[self.pos:self.pos + n]
        self.pos += n
        return b

    def entries(self):
        pax_size = None
        pax_path = None
        while True:
            if not self.more(512):
                if self.pos == self.end:
                    return
                die(3, 'the upload ended early (connection dropped?)')
            h = bytes(self.take(512))
            if h == ZERO_BLOCK:
                return
            chk = sum(h[:148]) + 256 + sum(h[156:])
            try:
                if int(h[148:156].split(b'\0')[0].strip() or b'0', 8) != chk:
                    die(3, 'damaged tar header')
            except ValueError:
                die(3, 'damaged tar header')
            name = h[:100].split(b'\0')[0]
            prefix = h[345:500].split(b'\0')[0]
            if prefix:
                name = prefix + b'/' + name
            sf = h[124:136]
            if sf[0] & 0x80:
                size = int.from_bytes(sf[1:], 'big')
            else:
                size = int(sf.split(b'\0')[0].strip() or b'0', 8)
            typ = h[156:157]
            if typ in (b'x', b'g'):
                if size > 1 << 20:
                    die(3, 'a pax header of %d bytes' % size)
                data = bytes(self.take(size))
                self.take((-size) % 512)
                if typ == b'x':
                    pos = 0
                    while pos < len(data):
                        sp = data.index(b' ', pos)
                        ln = int(data[pos:sp])
                        rec = data[sp + 1:pos + ln - 1]
                        k, _, v = rec.partition(b'=')
                        if k == b'size':
                            pax_size = int(v)
                        elif k == b'path':
                            pax_path = v
                        pos += ln
                continue
            if pax_size is not None:
                size = pax_size
            if pax_path is not None:
                name = pax_path
            pax_size = pax_path = None
            yield name, typ, size
            # the consumer must read exactly `size` bytes through self.read_data
            self.take((-size) % 512)

    def read_data(self, size):
        """The entry's bytes as views of the buffer, each valid until the next one."""
        left = size
        while left:
            if self.pos == self.end:
                self.pos = self.end = 0
                if not self.more(1):
                    die(3, 'the upload ended early (connection dropped?)')
            n = min(left, self.end - self.pos)
            yield self.mv[self.pos:self.pos + n]
            self.pos += n
            left -= n


ZERO_BLOCK = bytes(512)


def clean_tmp(tmpd):
    # partial files of uploads that were cut off (another upload may be running: only old
    # ones)
    now = time.time()
    for sub in os.listdir(tmpd):
        sd = os.path.join(tmpd, sub)
        try:
            names = os.listdir(sd)
        except OSError:
            continue
        for n in names:
            try:
                if now - os.lstat(os.path.join(sd, n)).st_mtime > 3600:
                    os.unlink(os.path.join(sd, n))
            except OSError:
                pass


def full_manifest(sid, manifest, delta):
    """The snapshot's entry lines from a full manifest or a delta against a base we have;
    they must hash to the snapshot id."""
    if manifest is not None:
        lines = entry_lines(manifest)
        if not lines or not lines[0].startswith(b'{"ctarget_snapshot"'):
            die(3, 'manifest.jsonl is not a ctarget manifest')
        lines = lines[1:]
    else:
        dl = entry_lines(delta)
        head = json.loads(dl[0].decode())
        if head.get('snapshot') != sid:
            die(3, 'the delta is for snapshot %s, not %s' % (head.get('snapshot'), sid))
        base = os.path.join(ROOT, 'snapshots', ok_sha(head.get('base', '')) + '.jsonl')
        try:
            with open(base, 'rb') as f:
                blines = entry_lines(f.read())
        except OSError:
            die(3, 'the base snapshot %s of the delta is not here' % head.get('base'))
        ent = {}
        for l in blines:
            ent[path_literal(l)] = l
        for l in dl[1:]:
            if l.startswith(b'+ '):
                e = l[2:]
                ent[path_literal(e)] = e
            elif l.startswith(b'- '):
                ent.pop(l[2:-1], None)
            else:
                die(3, 'bad delta line %r' % l[:80])
        lines = sorted(ent.values(), key=lambda l: decode_literal(path_literal(l)))
    if hashlib.sha256(b''.join(lines)).hexdigest() != sid:
        die(3, 'the manifest does not hash to snapshot %s' % sid)
    return lines


class Builder(object):
    """A run's source tree from a manifest, with the safe-extraction rules: every path
    relative without '', '.' or '..' components, every parent a directory of the manifest
    (created here, in a fresh directory), symlinks created last and never followed."""

    def __init__(self, rd, sid, lines):
        self.rd, self.sid, self.lines = rd, sid, lines
        self.src = os.fsencode(os.path.join(rd, 'src'))
        self.dirs, self.links, self.files = [], [], []
        self.need = {}        # sha -> [(path, mode, size)]
        self.written = set()  # shas whose files exist
        known = {b''}
        for e in parse_entries(lines):
            p = e['bpath']
            check_path(p)
            if p.rpartition(b'/')[0] not in known:
                die(3, 'refused path %r: its parent is not a directory of the snapshot' % p)
            t = e.get('type')
            if t == 'dir':
                known.add(p)
                self.dirs.append((p, e.get('mode', 0o755) & 0o777))
            elif t == 'file':
                sha = ok_sha(e.get('sha256', ''))
                self.need.setdefault(sha, []).append((p, e.get('mode', 0o644) & 0o777,
                                                      e.get('size')))
            elif t == 'symlink':
                self.links.append((p, os.fsencode(e.get('target', ''))))
            else:
                die(3, 'refused entry %r of type %r' % (p, t))

    def start(self):
        marker = os.path.join(self.rd, 'src.snapshot')
        if os.path.lexists(marker):
            os.unlink(marker)
        if os.path.lexists(self.src):
            shutil.rmtree(self.src)
        os.mkdir(self.src, 0o700)
        for p, _ in self.dirs:
            os.mkdir(self.src + b'/' + p, 0o700)

    def create(self, p, mode):
        return os.open(self.src + b'/' + p, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                       os.O_NOFOLLOW | os.O_CLOEXEC, mode)

    def from_stream(self, sha, chunks):
        """A blob arriving in the upload goes straight to its file(s)."""
        paths = self.need.get(sha)
        if not paths or sha in self.written:
            for _ in chunks:
                pass
            return
        p, mode, _ = paths[0]
        fd = self.create(p, mode)
        try:
            for b in chunks:
                write_all(fd, b)
            if mode & UMASK:  # only when the umask took bits away
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        for q, m, _ in paths[1:]:
            copy_file(self.src + b'/' + p, self.src + b'/' + q, m)
        self.written.add(sha)

    def from_cache(self):
        """The files whose blobs did not come in the upload; returns the shas missing."""
        missing = []
        for sha, paths in self.need.items():
            if sha in self.written:
                continue
            for p, mode, size in paths:
                try:
                    n = copy_file(blob_path(sha), self.src + b'/' + p, mode)
                except FileNotFoundError:
                    n = -1
                if n != size:
                    missing.append(sha)
                    break
            else:
                self.written.add(sha)
        return missing

    def finish(self):
        for p, mode in reversed(self.dirs):
            os.chmod(self.src + b'/' + p, mode)
        os.chmod(self.src, 0o755)
        for p, target in self.links:
            os.symlink(target, self.src + b'/' + p)
        write_atomic(os.path.join(self.rd, 'src.snapshot'), self.sid.encode())


def v_receive(args):
    """The upload.  Without a run id the blobs go to the cache (each checked against its
    name).  With one, they go straight into that run's tree (the run starts without a second
    pass over the data), and the run's cleanup moves them into the cache after checking
    them; until then the snapshot is not recorded, so nothing can rely on a cache that does
    not have it yet."""
    sid = ok_sha(args[0])
    rid = args[1] if len(args) > 1 else None
    top_mkdirs(os.path.join(ROOT, 'runs'))
    top_mkdirs(os.path.join(ROOT, 'blobs'))
    tmpd = os.path.join(ROOT, 'tmp')
    top_mkdirs(tmpd)
    mkdirs(os.path.join(ROOT, 'snapshots'))
    clean_tmp(tmpd)
    t = TarIn(sys.stdin.buffer)
    lines = None
    builder = None
    nblobs = nbytes = 0
    made = set()
    for name, typ, size in t.entries():
        if typ not in (b'0', b'\0'):
            die(3, 'refused tar entry %r: not a regular file' % name)
        if name in (b'manifest.jsonl', b'manifest.delta'):
            if size > 256 << 20:
                die(3, '%s is larger than 256 MB' % name.decode())
            data = b''.join([bytes(c) for c in t.read_data(size)])
            lines = full_manifest(sid, data if name == b'manifest.jsonl' else None,
                                  data if name == b'manifest.delta' else None)
            if rid:
                rd = run_dir(rid)
                mkdirs(rd)
                builder = Builder(rd, sid, lines)
                builder.start()
            continue
        if not name.startswith(b'blobs/'):
            die(3, 'refused tar entry %r' % name)
        sha = ok_sha(name[6:].decode('ascii', 'replace'))
        nblobs += 1
        nbytes += size
        if builder:
            builder.from_stream(sha, t.read_data(size))
            continue
        # partial files in tmp/<xx>/, never under blobs/; small directories (one tmp/
        # directory of 10,000 entries made every create scan it)
        d = os.path.join(ROOT, 'blobs', sha[:2])
        td = os.path.join(tmpd, sha[:2])
        if d not in made:
            mkdirs(d)
            mkdirs(td)
            made.add(d)
        tmp = os.path.join(td, '%s.%d' % (sha, os.getpid()))
        h = hashlib.sha256()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            for b in t.read_data(size):
                h.update(b)
                write_all(fd, b)
        finally:
            os.close(fd)
        if h.hexdigest() != sha:
            os.unlink(tmp)
            die(3, 'blob %s arrived damaged (its sha256 is %s)' % (sha, h.hexdigest()))
        os.rename(tmp, os.path.join(d, sha))
    if lines is None:
        die(3, 'the upload has no manifest')
    if builder:
        missing = builder.from_cache()
    else:
        missing = []
        # (a Builder that is never started only indexes and checks the manifest)
        for sha, paths in Builder(ROOT, sid, lines).need.items():
            try:
                if os.stat(blob_path(sha)).st_size != paths[0][2]:
                    missing.append(sha)
            except OSError:
                missing.append(sha)
    if missing:
        out_json({'missing': sorted(set(missing))})
        die(4, '%d blobs of snapshot %s are missing on this machine' % (len(set(missing)), sid))
    body = b''.join(lines)
    if builder:
        write_atomic(os.path.join(builder.rd, 'manifest.jsonl'), body)
        builder.finish()
        mark_unadopted(rid)
    else:
        # No sync of the blobs (that alone cost more than the transfer): a blob torn by a
        # crash has the wrong size (ordered-mode file systems), which `missing` and
        # `materialize` check; materialize then drops the snapshot record so the plugin
        # ships it again.
        write_atomic(os.path.join(ROOT, 'snapshots', sid + '.jsonl'), body)
    out_json({'blobs': nblobs, 'bytes': nbytes, 'direct': bool(builder)})


def copy_file(src, dst, mode):
    fi = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        try:
            size = os.fstat(fi).st_size
            off = 0
            while off < size:
                try:
                    n = os.copy_file_range(fi, fo, size - off)
                except (AttributeError, OSError):
                    n = os.sendfile(fo, fi, off, size - off)
                    if n <= 0:
                        break
                    off += n
                    continue
                if n <= 0:
                    break
                off += n
            os.fchmod(fo, mode)
        finally:
            os.close(fo)
    finally:
        os.close(fi)
    return size


def v_materialize(args):
    rid, sid = args[0], ok_sha(args[1])
    rd = run_dir(rid)
    mkdirs(rd)
    marker = os.path.join(rd, 'src.snapshot')
    log = os.path.join(rd, 'std_log.txt')
    if not os.path.exists(log):
        open(log, 'ab').close()
    try:
        with open(marker) as f:
            if f.read().strip() == sid and os.path.isdir(os.path.join(rd, 'src')):
                return
    except OSError:
        pass
    try:
        with open(os.path.join(ROOT, 'snapshots', sid + '.jsonl'), 'rb') as f:
            lines = entry_lines(f.read())
    except OSError:
        die(6, 'snapshot %s is not on this machine' % sid)
    b = Builder(rd, sid, lines)
    b.start()
    missing = b.from_cache()
    if missing:
        # lost or torn (a crash before write-back): forget the snapshot, so that the next
        # `begin` says it is not here and the plugin ships what is missing
        for p2 in [blob_path(s) for s in missing] + [
                os.path.join(ROOT, 'snapshots', sid + '.jsonl')]:
            try:
                os.unlink(p2)
            except OSError:
                pass
        die(4, '%d blob(s) of snapshot %s are missing or damaged in the cache' %
            (len(missing), sid))
    b.finish()


def v_env(args):
    rid, kind, h, python = args[0], args[1], ok_id(args[2], 'environment hash'), args[3]
    rd = run_dir(rid)
    mkdirs(rd)
    envs = os.path.join(ROOT, 'envs')
    mkdirs(envs)
    final = os.path.join(envs, h)
    py = os.path.join(final, 'bin', 'python')
    log = open(os.path.join(rd, 'std_log.txt'), 'ab')
    if os.path.exists(py):
        out_json({'python': py})
        return
    spec = sys.stdin.buffer.read()
    with open(os.path.join(envs, h + '.lock'), 'wb') as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        if os.path.exists(py):
            out_json({'python': py})
            return
        log.write(b'[ctarget] building environment %s (%s)\n' % (h.encode(), kind.encode()))
        log.flush()
        tmp = os.path.join(envs, '%s.tmp-%d' % (h, os.getpid()))
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        specf = os.path.join(envs, '%s.spec-%d' % (h, os.getpid()))
        with open(specf, 'wb') as f:
            f.write(spec)
        try:
            if kind == 'pip':
                if not shutil.which(python):
                    die(5, '%s is not installed on this machine (set python, or install python3)'
                        % python)
                steps = [[python, '-m', 'venv', tmp],
                         [os.path.join(tmp, 'bin', 'python'), '-m', 'pip', 'install',
                          '--disable-pip-version-check', '-r', specf]]
            elif kind == 'conda':
                conda = shutil.which('mamba') or shutil.which('conda')
                if not conda:
                    die(5, 'conda is not installed on this machine: install Miniconda or '
                        'mamba, or use a requirements file')
                steps = [[conda, 'env', 'create', '-p', tmp, '-f', specf]]
            else:
                die(2, 'unknown environment kind %r' % kind)
            for i, argv in enumerate(steps):
                try:
                    r = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
                except OSError as e:
                    die(5, 'cannot run %s: %s' % (argv[0], e.strerror))
                if r.returncode != 0:
                    if kind == 'pip' and i == 0:
                        die(5, '"%s -m venv" failed: install python3-venv on this machine '
                            '(sudo apt-get install python3-venv)' % python)
                    die(1, '%s failed with exit code %d (see the run log)' %
                        (' '.join(argv[:4]), r.returncode))
            os.rename(tmp, final)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            os.unlink(specf)
    log.write(b'[ctarget] environment %s ready\n' % h.encode())
    out_json({'python': py})


def proc_start(pid):
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            s = f.read()
        return int(s[s.rindex(b')') + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def subreaper():
    """Orphans of the script become the wrapper's children (Linux), so none is left
    behind unseen."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def children():
    me, out = os.getpid(), []
    for n in os.listdir('/proc'):
        if n.isdigit():
            try:
                with open('/proc/%s/stat' % n, 'rb') as f:
                    s = f.read()
                if int(s[s.rindex(b')') + 2:].split()[1]) == me:
                    out.append(int(n))
            except (OSError, ValueError):
                pass
    return out


def reap_all():
    """Kill and reap whatever the script left (processes that left its group too)."""
    for _ in range(200):
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        kids = children()
        if not kids:
            return
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def wrapper(rd, argv, env, grace, docker_name, engine):
    """Runs detached (session leader); the script in its own process group."""
    canceled = [False]
    child = [0]

    def on_term(sig, frame):
        if canceled[0]:
            return
        canceled[0] = True
        try:
            os.killpg(child[0], signal.SIGTERM)
        except OSError:
            pass
        if docker_name:
            subprocess.run([engine, 'kill', '--signal', 'TERM', docker_name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(max(1, int(grace)))

    def on_alarm(sig, frame):
        try:
            os.killpg(child[0], signal.SIGKILL)
        except OSError:
            pass
        if docker_name:
            subprocess.run([engine, 'kill', docker_name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    subreaper()
    log = os.open(os.path.join(rd, 'std_log.txt'), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    src = os.path.join(rd, 'src')
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            os.chdir(src)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            os.write(2, ('ctarget: cannot start %s: %s\n' %
                         (os.fsdecode(argv[0]), e.strerror)).encode())
        os._exit(127)
    child[0] = pid
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    write_atomic(os.path.join(rd, 'pid'), json.dumps({
        'pid': pid, 'pgid': pid, 'start': proc_start(pid), 'wrapper_pid': os.getpid(),
        'wrapper_start': proc_start(os.getpid()),
        'started_ms': int(time.time() * 1000)}).encode())
    while True:
        try:
            _, st = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            st = 0
            break
    res = {'canceled': canceled[0] or os.path.exists(os.path.join(rd, 'cancel')),
           'ended_ms': int(time.time() * 1000)}
    if os.WIFSIGNALED(st):
        res['signal'] = os.WTERMSIG(st)
    else:
        res['exit_code'] = os.WEXITSTATUS(st)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    reap_all()
    write_atomic(os.path.join(rd, 'exit_status'), json.dumps(res).encode())


def v_start(args):
    dry = False
    if args and args[0] == '--dry-run':
        dry = True
        args = args[1:]
    rid = args[0]
    rd = run_dir(rid)
    spec = json.loads(sys.stdin.buffer.read().decode())
    pidf = os.path.join(rd, 'pid')
    if not dry and os.path.exists(pidf):
        out_json(read_json(pidf) or {})
        return
    src = os.path.join(rd, 'src')
    if not dry and not os.path.isdir(src):
        die(6, 'run %s has no source directory here (prepare first)' % rid)
    argv = [bytes.fromhex(a) for a in spec['argv']]
    env = dict(os.environb) if hasattr(os, 'environb') else {}
    extra = []
    for kv in spec.get('env', []):
        b = bytes.fromhex(kv)
        k, _, v = b.partition(b'=')
        extra.append((k, v))
    metrics = os.path.join(rd, 'metrics.jsonl')
    dk = spec.get('docker')
    docker_name = None
    engine = None
    if dk:
        engine = dk.get('engine') or 'docker'
        docker_name = 'ctarget-' + rid
        ours = [(b'CTARGET_RUN_ID', rid.encode()),
                (b'CTARGET_OUTPUTS_DIR', b'/ctarget/src/outputs'),
                (b'CTARGET_METRICS_FILE', b'/ctarget/metrics.jsonl')]
        d = [engine.encode(), b'run', b'--rm', b'--name', docker_name.encode(),
             b'-v', os.fsencode(src) + b':/ctarget/src',
             b'-v', os.fsencode(metrics) + b':/ctarget/metrics.jsonl',
             b'-w', b'/ctarget/src']
        for k, v in ours + extra:
            d += [b'-e', k]
            env[k] = v
        if dk.get('gpu'):
            d += [b'--gpus', b'all']
        d.append(dk['image'].encode())
        argv = d + argv
    else:
        for k, v in [(b'CTARGET_RUN_ID', rid.encode()),
                     (b'CTARGET_OUTPUTS_DIR', os.fsencode(os.path.join(src, 'outputs'))),
                     (b'CTARGET_METRICS_FILE', os.fsencode(metrics))] + extra:
            env[k] = v
    if dry:
        out_json([a.decode('utf-8', 'surrogateescape') for a in argv])
        return
    for d in ('outputs', 'logs'):
        mkdirs(os.path.join(src, d))
    open(metrics, 'ab').close()
    grace = spec.get('grace', 10)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        try:
            nul = os.open(os.devnull, os.O_RDWR)
            logfd = os.open(os.path.join(rd, 'std_log.txt'),
                            os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.dup2(nul, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            os.closerange(3, w)
            os.closerange(w + 1, 65536)
            os.set_inheritable(w, False)
            os.write(w, b'x')
            os.close(w)
            wrapper(rd, argv, env, grace, docker_name, engine)
        except BaseException as e:  # the wrapper has nobody to report to but its log
            try:
                os.write(2, ('ctarget: wrapper failed: %s\n' % e).encode())
            except OSError:
                pass
            os._exit(1)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    os.read(r, 1)
    os.close(r)
    for _ in range(200):
        j = read_json(pidf)
        if j:
            out_json(j)
            return
        time.sleep(0.01)
    die(1, 'the run did not start (see %s)' % os.path.join(rd, 'std_log.txt'))


def state_of(rd):
    st = read_json(os.path.join(rd, 'exit_status'))
    canceled = os.path.exists(os.path.join(rd, 'cancel'))
    pidj = read_json(os.path.join(rd, 'pid'))
    o = {'canceled': canceled, 'exit_code': None, 'signal': 0, 'started_ms': None,
         'ended_ms': None, 'reason': None}
    if pidj:
        o['started_ms'] = pidj.get('started_ms')
    if st:
        o.update(state='exited', exit_code=st.get('exit_code'), signal=st.get('signal', 0),
                 canceled=bool(st.get('canceled')), ended_ms=st.get('ended_ms'))
        return o
    if not pidj:
        o['state'] = 'not_started'
        return o
    wp, ws = pidj.get('wrapper_pid'), pidj.get('wrapper_start')
    sp, ss = pidj.get('pid'), pidj.get('start')
    if proc_start(wp) == ws and ws is not None:
        o['state'] = 'running'
        return o
    # the wrapper may have written exit_status just now
    st = read_json(os.path.join(rd, 'exit_status'))
    if st:
        return state_of(rd)
    script = proc_start(sp) == ss and ss is not None
    o['state'] = 'vanished'
    o['reason'] = ('the run\'s wrapper process %s is gone and recorded no exit status '
                   '(killed, or the machine restarted)%s' %
                   (wp, '; the script still runs without it' if script else ''))
    return o


def size_of(p):
    try:
        return os.stat(p).st_size
    except OSError:
        return 0


def v_poll(args):
    rid = args[0]
    lo, mo, wait = int(args[1]), int(args[2]), int(args[3])
    rd = run_dir(rid)
    if not os.path.isdir(rd):
        die(6, 'run %s is not on this machine' % rid)
    logp = os.path.join(rd, 'std_log.txt')
    metp = os.path.join(rd, 'metrics.jsonl')
    deadline = time.time() + wait / 1000.0
    while True:
        o = state_of(rd)
        ls, ms = size_of(logp), size_of(metp)
        if o['state'] in ('exited', 'vanished') or ls > lo or ms > mo or time.time() >= deadline:
            break
        time.sleep(0.05)
    cap = 4 << 20

    def chunk(p, off):
        try:
            with open(p, 'rb') as f:
                f.seek(off)
                return f.read(cap)
        except OSError:
            return b''
    lb, mb = chunk(logp, lo), chunk(metp, mo)
    # metrics: whole lines only
    if mb and not mb.endswith(b'\n'):
        mb = mb[:mb.rfind(b'\n') + 1]
    o.update(log_size=ls, metrics_size=ms, log_len=len(lb), metrics_len=len(mb))
    out = sys.stdout.buffer
    out.write(json.dumps(o).encode() + b'\n')
    out.write(lb)
    out.write(mb)
    out.flush()


def v_cancel(args):
    rd = run_dir(args[0])
    if not os.path.isdir(rd):
        die(6, 'run %s is not on this machine' % args[0])
    if not os.path.exists(os.path.join(rd, 'cancel')):
        write_atomic(os.path.join(rd, 'cancel'), str(int(time.time() * 1000)).encode())
    pidj = read_json(os.path.join(rd, 'pid'))
    if not pidj or os.path.exists(os.path.join(rd, 'exit_status')):
        return
    wp, ws = pidj.get('wrapper_pid'), pidj.get('wrapper_start')
    if ws is not None and proc_start(wp) == ws:
        os.kill(wp, signal.SIGTERM)
        return
    sp, ss = pidj.get('pid'), pidj.get('start')
    if ss is not None and proc_start(sp) == ss:
        try:
            os.killpg(sp, signal.SIGKILL)
        except OSError:
            pass


def v_pack(args):
    rd = run_dir(args[0])
    src = os.path.join(rd, 'src')
    out = sys.stdout.buffer

    def walk(rel):
        full = os.path.join(src, rel)
        try:
            st = os.lstat(full)
        except OSError:
            return
        import stat as S
        if S.S_ISDIR(st.st_mode):
            p = os.fsencode(rel)
            out.write(b'D %o %d\n' % (st.st_mode & 0o777, len(p)) + p)
            for n in sorted(os.listdir(full)):
                walk(os.path.join(rel, n))
        elif S.S_ISREG(st.st_mode):
            p = os.fsencode(rel)
            with open(full, 'rb') as f:
                size = os.fstat(f.fileno()).st_size
                out.write(b'F %o %d %d\n' % (st.st_mode & 0o777, size, len(p)) + p)
                left = size
                while left:
                    b = f.read(min(CHUNK, left))
                    if not b:
                        b = b'\0' * min(CHUNK, left)  # the file shrank: keep the framing
                    out.write(b)
                    left -= len(b)
    for d in ('outputs', 'logs'):
        walk(d)
    out.write(b'E\n')
    out.flush()


def adopt(rd, copy=False):
    """A run whose snapshot came straight into its tree: put the files that still hold
    their snapshot content into the cache (each hashed: the run may have changed them), and
    record the snapshot once the cache has every blob.  copy: the run may still be using
    its tree (an upload's `begin` wants the blobs now), so copy; at cleanup, move."""
    mpath = os.path.join(rd, 'manifest.jsonl')
    try:
        with open(mpath, 'rb') as f:
            body = f.read()
        with open(os.path.join(rd, 'src.snapshot')) as f:
            sid = ok_sha(f.read().strip())
    except (OSError, Fail):
        return
    b = Builder(rd, sid, entry_lines(body))
    tmpd = os.path.join(ROOT, 'tmp')
    complete = True
    for sha, paths in b.need.items():
        if os.path.exists(blob_path(sha)):
            continue
        ok = False
        for p, _, size in paths:
            full = b.src + b'/' + p
            try:
                st = os.lstat(full)
                if not (st.st_mode & 0o170000 == 0o100000 and st.st_size == size):
                    continue
                d = os.path.join(ROOT, 'blobs', sha[:2])
                mkdirs(d)
                h = hashlib.sha256()
                if copy or st.st_nlink != 1:
                    # hashed while copied: what lands in the cache is what was checked
                    mkdirs(os.path.join(tmpd, sha[:2]))
                    tmp = os.path.join(tmpd, sha[:2], '%s.%d' % (sha, os.getpid()))
                    fo = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                 0o600)
                    try:
                        with open(full, 'rb') as f:
                            for c in iter(lambda: f.read(CHUNK), b''):
                                h.update(c)
                                write_all(fo, c)
                    finally:
                        os.close(fo)
                    if h.hexdigest() != sha:
                        os.unlink(tmp)
                        continue
                    os.rename(tmp, os.path.join(d, sha))
                else:
                    with open(full, 'rb') as f:
                        for c in iter(lambda: f.read(CHUNK), b''):
                            h.update(c)
                    if h.hexdigest() != sha:
                        continue
                    os.rename(full, os.path.join(d, sha))
                ok = True
                break
            except OSError:
                continue
        complete = complete and ok
    if complete:
        write_atomic(os.path.join(ROOT, 'snapshots', sid + '.jsonl'), body)
    os.unlink(mpath)


def mark_unadopted(rid):
    """Right after an upload straight into a run, the run's tree holds the only copy of the
    new blobs on this machine.  They go into the cache when the run is cleaned up (moved,
    not copied: no second write of the upload, no deletions) or, when an upload asks for
    them before that (a resubmit, a sweep, another client), copied by its `begin`.
    adopting/<id> says the run still holds them; runs/<id>/adopt.lock serializes the two."""
    mkdirs(os.path.join(ROOT, 'adopting'))
    open(os.path.join(ROOT, 'adopting', rid), 'wb').close()


def adopt_locked(rid, copy, limit=None):
    """adopt() the run's tree under its lock (copy: only if it is still marked), then drop
    the mark.  False when another process held the lock for `limit` seconds (None: wait as
    long as it takes; cleanup must not delete a tree that a `begin` is still copying)."""
    rd = run_dir(rid)
    marker = os.path.join(ROOT, 'adopting', rid)
    try:
        fd = os.open(os.path.join(rd, 'adopt.lock'), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
    except OSError:  # the run directory is gone: nothing to adopt
        try:
            os.unlink(marker)
        except OSError:
            pass
        return True
    try:
        if limit is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            end = time.time() + limit
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.time() > end:
                        return False
                    time.sleep(0.05)
        if os.path.exists(marker) or not copy:
            # (cleanup also adopts an unmarked tree: an upload cut off before its mark)
            adopt(rd, copy=copy)
        try:
            os.unlink(marker)
        except OSError:
            pass
        return True
    finally:
        os.close(fd)


def adopt_waiting():
    """Before an upload asks what this machine lacks: copy into the cache what finished
    uploads still hold only in their runs' trees, so nothing is shipped twice."""
    try:
        rids = os.listdir(os.path.join(ROOT, 'adopting'))
    except OSError:
        return
    for rid in rids:
        if ID_RE(rid) and rid not in ('.', '..'):
            adopt_locked(rid, copy=True, limit=120.0)


def v_cleanup(args):
    rd = run_dir(args[0])
    adopt_locked(args[0], copy=False)
    shutil.rmtree(os.path.join(rd, 'src'), ignore_errors=True)
    try:
        os.unlink(os.path.join(rd, 'src.snapshot'))
    except OSError:
        pass


def v_gc(args):
    keep = set()
    d = os.path.join(ROOT, 'snapshots')
    for n in os.listdir(d) if os.path.isdir(d) else []:
        with open(os.path.join(d, n), 'rb') as f:
            for l in entry_lines(f.read()):
                m = re.search(rb'"sha256": "([0-9a-f]{64})"', l)
                if m:
                    keep.add(m.group(1).decode())
    removed = nbytes = 0
    bd = os.path.join(ROOT, 'blobs')
    for sub in os.listdir(bd) if os.path.isdir(bd) else []:
        for n in os.listdir(os.path.join(bd, sub)):
            if n not in keep:
                p = os.path.join(bd, sub, n)
                nbytes += os.lstat(p).st_size
                os.unlink(p)
                removed += 1
    shutil.rmtree(os.path.join(ROOT, 'tmp'), ignore_errors=True)
    out_json({'removed': removed, 'bytes': nbytes})


class Chunked(object):
    """Standard input of a streamed verb over `serve`: frames "<hex length>\\n<bytes>",
    ended by "0\\n"."""

    def __init__(self, f):
        self.f, self.left, self.done = f, 0, False
        self.buffer = self

    def read(self, n=-1):
        if n is None or n < 0:  # everything that is left (only drain asks, in pieces)
            out = []
            while not self.done:
                out.append(self.read(CHUNK))
            return b''.join(out)
        buf = bytearray(n)
        return bytes(buf[:self.readinto(memoryview(buf))])

    def readinto(self, view):
        got, n = 0, len(view)
        while got < n and not self.done:
            if not self.left:
                line = self.f.readline()
                if not line:
                    die(3, 'the upload ended early (connection dropped?)')
                self.left = int(line, 16)
                if not self.left:
                    self.done = True
                    break
            k = self.f.readinto(view[got:got + min(self.left, n - got)])
            if not k:
                die(3, 'the upload ended early (connection dropped?)')
            self.left -= k
            got += k
        return got

    def drain(self):
        while not self.done:
            self.read(CHUNK)


def v_serve(args):
    """Many verbs over one channel (one interpreter start per connection).  Request: a JSON
    line {"verb", "args", "len"} then len bytes of standard input; answer: a JSON line
    {"exit", "len", "err"} then len bytes of standard output."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    real_in, real_out = sys.stdin, sys.stdout
    while True:
        line = inp.readline()
        if not line:
            return
        try:
            req = json.loads(line.decode())
            verb, vargs, n = req['verb'], [str(a) for a in req['args']], int(req['len'])
        except (ValueError, KeyError, TypeError):
            die(2, 'bad serve request %r' % line[:80])
        chunked = None
        if n < 0:  # a streamed verb: its input follows in frames
            chunked = Chunked(inp)
            sys.stdin = chunked
        else:
            data = inp.read(n) if n else b''
            if len(data) != n:
                return
            sys.stdin = io.TextIOWrapper(io.BytesIO(data))
        body = io.BytesIO()
        sys.stdout = io.TextIOWrapper(body, write_through=True)
        code, err = 0, ''
        try:
            if verb not in VERBS or verb == 'serve' or (verb in STREAMED and not chunked):
                die(2, 'verb %r cannot be served' % verb)
            if len(vargs) < NARGS.get(verb, 0):
                die(2, '%s needs %d arguments' % (verb, NARGS[verb]))
            VERBS[verb](vargs)
        except Fail as e:
            code, err = e.code, str(e)
        except OSError as e:
            code, err = 1, '%s: %s' % (e.filename or verb, e.strerror)
        try:
            sys.stdout.flush()
        except ValueError:
            pass
        if chunked:  # keep in step with the client, whatever the verb read
            try:
                chunked.drain()
            except Fail:
                return
        res = body.getvalue()
        sys.stdin, sys.stdout = real_in, real_out
        out.write(json.dumps({'exit': code, 'len': len(res), 'err': err}).encode() + b'\n')
        out.write(res)
        out.flush()


STREAMED = ('receive', 'pack')
VERBS = {'serve': v_serve, 'facts': v_facts, 'begin': v_begin, 'missing': v_missing, 'receive': v_receive,
         'materialize': v_materialize, 'env': v_env, 'start': v_start, 'poll': v_poll,
         'cancel': v_cancel, 'pack': v_pack, 'cleanup': v_cleanup, 'gc': v_gc}
NARGS = {'begin': 1, 'receive': 1, 'materialize': 2, 'env': 4, 'start': 1, 'poll': 4,
         'cancel': 1, 'pack': 1, 'cleanup': 1}


def main():
    global ROOT
    if len(sys.argv) < 4 or sys.argv[3] not in VERBS:
        sys.stderr.write('ctarget-agent: usage: ROOT HASH VERB ARGS\n')
        return 2
    ROOT = os.path.abspath(sys.argv[1])
    try:  # a deeper pipe from sshd: uploads stream with fewer stalls (Linux; best effort)
        fcntl.fcntl(0, 1031, 1 << 20)  # F_SETPIPE_SZ
    except (OSError, ValueError):
        pass
    verb, args = sys.argv[3], sys.argv[4:]
    try:
        if len(args) < NARGS.get(verb, 0):
            die(2, '%s needs %d arguments' % (verb, NARGS[verb]))
        mkdirs(ROOT)
        os.chmod(ROOT, 0o700)
        VERBS[verb](args)
    except Fail as e:
        sys.stderr.write('ctarget-agent: %s\n' % e)
        sys.stdout.flush()
        return e.code
    except OSError as e:
        sys.stderr.write('ctarget-agent: %s: %s\n' % (e.filename or verb, e.strerror))
        return 1
    except BrokenPipeError:
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
