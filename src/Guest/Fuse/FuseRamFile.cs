using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace SEmigrate.Guest.Fuse;

/// <summary>One file (a guest's RAM, for QEMU's memory-backend-file) served by this process over the
/// kernel's FUSE protocol (/dev/fuse, protocol 7.x): a folder with a single regular file whose reads
/// and writes go to an <see cref="IRamFile"/>. The file is not direct-I/O, so QEMU can map it shared
/// and the kernel's page cache holds what the guest touched; dirty pages come back as writes, and
/// <see cref="Invalidate"/> drops a range from the page cache (its dirty pages are written back first),
/// so the next touch reads it here again. One thread reads requests; reads and writes of the file are
/// answered from the thread pool, so a slow page-in does not hold up other requests.</summary>
public sealed class FuseRamFile : IAsyncDisposable
{
    private const ulong RootId = 1;
    private const ulong FileId = 2;
    private const int MaxWrite = 1 << 20;
    private const int BufferSize = MaxWrite + 64 * 1024;
    private const int InHeader = 40;
    private const int OutHeader = 16;
    private const uint ProtocolMinor = 38;

    private readonly int fd;
    private readonly string mountpoint;
    private readonly string name;
    private readonly IRamFile file;
    private readonly Action<string> log;
    private readonly uint readahead;
    private readonly Thread reader;
    private readonly TaskCompletionSource initialised = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long bytesRead;
    private long bytesWritten;
    private int disposed;

    private FuseRamFile(int fd, string mountpoint, string name, IRamFile file, Action<string> log, uint readahead)
    {
        (this.fd, this.mountpoint, this.name, this.file, this.log, this.readahead) = (fd, mountpoint, name, file, log, readahead);
        reader = new Thread(ReadRequests) { IsBackground = true, Name = $"fuse {mountpoint}" };
    }

    /// <summary>The served file's path: the RAM file QEMU maps.</summary>
    public string FilePath => Path.Combine(mountpoint, name);

    /// <summary>Bytes the kernel read from the file (page faults and readahead) and wrote back to it.</summary>
    public (long Read, long Written) Traffic => (Interlocked.Read(ref bytesRead), Interlocked.Read(ref bytesWritten));

    /// <summary>Mounts an empty folder <paramref name="mountpoint"/> (as root) holding the file
    /// <paramref name="name"/>; returns once the kernel has initialised the connection. A page fault
    /// reads at most <paramref name="readaheadBytes"/> around the page (the kernel's own limit if that
    /// is lower; 0: the faulting page alone), unless the mapping asks for huge pages (see
    /// <see cref="Qemu.HugePageAdvice"/>).</summary>
    public static async Task<FuseRamFile> MountAsync(string mountpoint, string name, IRamFile file, Action<string>? log = null, uint readaheadBytes = 128 * 1024)
    {
        if (name.Length == 0 || name.Contains('/', StringComparison.Ordinal) || Encoding.UTF8.GetByteCount(name) > 255)
        {
            throw new ArgumentException($"'{name}' is not a file name", nameof(name));
        }
        Directory.CreateDirectory(mountpoint);
        var fd = Libc.Open("/dev/fuse", Libc.ReadWrite | Libc.CloseOnExec);
        if (fd < 0)
        {
            throw new IOException(Libc.Error("cannot open /dev/fuse (FUSE needs root here)"));
        }
        // No allow_other: only root (the mounting user, as QEMU runs) reaches the file at all, whatever a
        // mode says (with allow_other the kernel checked nothing and any local user read guest RAM);
        // default_permissions: the kernel checks the file's 0600 too.
        var options = $"fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions";
        if (Libc.Mount("semigrate", mountpoint, "fuse.semigrate", Libc.NoSetUid | Libc.NoDevices, options) != 0)
        {
            var why = Libc.Error($"cannot mount a FUSE file system on {mountpoint}");
            Libc.Close(fd);
            throw new IOException(why);
        }
        var server = new FuseRamFile(fd, Path.GetFullPath(mountpoint), name, file, log ?? (_ => { }), readaheadBytes);
        server.reader.Start();
        await server.initialised.Task.WaitAsync(TimeSpan.FromSeconds(30));
        return server;
    }

    /// <summary>Drops [offset, offset + length) of the file from the kernel's page cache; its dirty pages
    /// are written back (to <see cref="IRamFile.WriteAsync"/>) before this returns. Never call it from a
    /// read or write of the file: the write-back needs this server to answer.</summary>
    public unsafe void Invalidate(long offset, long length)
    {
        const int notifyInvalInode = 2;
        Span<byte> notice = stackalloc byte[OutHeader + 24];
        BinaryPrimitives.WriteUInt32LittleEndian(notice, (uint)notice.Length);
        BinaryPrimitives.WriteInt32LittleEndian(notice[4..], notifyInvalInode);
        BinaryPrimitives.WriteUInt64LittleEndian(notice[8..], 0); // unique 0: a notification
        BinaryPrimitives.WriteUInt64LittleEndian(notice[16..], FileId);
        BinaryPrimitives.WriteInt64LittleEndian(notice[24..], offset);
        BinaryPrimitives.WriteInt64LittleEndian(notice[32..], length);
        fixed (byte* p = notice)
        {
            // ENOENT: the kernel holds no pages of the file, nothing to drop.
            if (Libc.Write(fd, p, notice.Length) < 0 && System.Runtime.InteropServices.Marshal.GetLastPInvokeError() != Libc.NoEntry)
            {
                throw new IOException(Libc.Error("FUSE invalidate failed"));
            }
        }
    }

    private unsafe void ReadRequests()
    {
        while (Volatile.Read(ref disposed) == 0)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
            nint n;
            fixed (byte* p = buffer)
            {
                n = Libc.Read(fd, p, BufferSize);
            }
            if (n < 0)
            {
                ArrayPool<byte>.Shared.Return(buffer);
                var errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                if (errno is Libc.Interrupted or Libc.NoEntry)
                {
                    continue;
                }
                if (errno != Libc.NoDevice)
                {
                    log(Libc.Error("FUSE read failed"));
                }
                initialised.TrySetException(new IOException("the FUSE connection ended before it was initialised"));
                return;
            }
            Dispatch(buffer, (int)n);
        }
    }

    /// <summary>Answers one request; the buffer goes back to the pool once answered.</summary>
    private void Dispatch(byte[] buffer, int length)
    {
        var request = buffer.AsSpan(0, length);
        var opcode = (Opcode)BinaryPrimitives.ReadUInt32LittleEndian(request[4..]);
        var unique = BinaryPrimitives.ReadUInt64LittleEndian(request[8..]);
        var node = BinaryPrimitives.ReadUInt64LittleEndian(request[16..]);
        var body = request[InHeader..];
        switch (opcode)
        {
            case Opcode.Read:
                _ = ReadAsync(unique, BinaryPrimitives.ReadInt64LittleEndian(body[8..]), BinaryPrimitives.ReadInt32LittleEndian(body[16..]), buffer);
                return;
            case Opcode.Write:
                _ = WriteAsync(unique, BinaryPrimitives.ReadInt64LittleEndian(body[8..]), BinaryPrimitives.ReadInt32LittleEndian(body[16..]), buffer);
                return;
        }
        try
        {
            switch (opcode)
            {
                case Opcode.Init:
                    Init(unique, body);
                    break;
                case Opcode.Lookup:
                    var wanted = Encoding.UTF8.GetString(body[..body.IndexOf((byte)0)]);
                    if (node == RootId && wanted == name)
                    {
                        Reply(unique, Entry());
                    }
                    else
                    {
                        Fail(unique, Errno.NoEntry);
                    }
                    break;
                case Opcode.GetAttr or Opcode.SetAttr:
                    // Nothing about the file changes: a size change (truncate) is refused, the rest ignored.
                    if (opcode == Opcode.SetAttr && (BinaryPrimitives.ReadUInt32LittleEndian(body) & 8) != 0 && BinaryPrimitives.ReadInt64LittleEndian(body[16..]) != file.Size)
                    {
                        Fail(unique, Errno.NotPermitted);
                        break;
                    }
                    Reply(unique, AttrOut(node));
                    break;
                case Opcode.Open or Opcode.OpenDir:
                    var open = new byte[16];
                    BinaryPrimitives.WriteUInt64LittleEndian(open, 1);
                    BinaryPrimitives.WriteUInt32LittleEndian(open.AsSpan(8), opcode == Opcode.Open ? 2u : 0u); // FOPEN_KEEP_CACHE: the page cache survives a reopen
                    Reply(unique, open);
                    break;
                case Opcode.ReadDir:
                    Reply(unique, DirectoryEntries(BinaryPrimitives.ReadInt64LittleEndian(body[8..]), BinaryPrimitives.ReadInt32LittleEndian(body[16..])));
                    break;
                case Opcode.Release or Opcode.ReleaseDir or Opcode.Flush or Opcode.Fsync or Opcode.FsyncDir or Opcode.Access:
                    Reply(unique, []);
                    break;
                case Opcode.StatFs:
                    var stat = new byte[80];
                    BinaryPrimitives.WriteUInt32LittleEndian(stat.AsSpan(40), 4096);
                    BinaryPrimitives.WriteUInt32LittleEndian(stat.AsSpan(44), 255);
                    BinaryPrimitives.WriteUInt32LittleEndian(stat.AsSpan(48), 4096);
                    Reply(unique, stat);
                    break;
                case Opcode.Forget or Opcode.BatchForget or Opcode.Interrupt:
                    break; // no reply
                case Opcode.Destroy:
                    Reply(unique, []);
                    break;
                default:
                    Fail(unique, Errno.NotImplemented);
                    break;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void Init(ulong unique, ReadOnlySpan<byte> body)
    {
        var major = BinaryPrimitives.ReadUInt32LittleEndian(body);
        var minor = BinaryPrimitives.ReadUInt32LittleEndian(body[4..]);
        var offered = BinaryPrimitives.ReadUInt32LittleEndian(body[8..]);
        if (major != 7)
        {
            Fail(unique, Errno.Protocol);
            initialised.TrySetException(new IOException($"the kernel speaks FUSE {major}.{minor}; this server speaks 7.x"));
            return;
        }
        const uint asyncRead = 1, bigWrites = 1 << 5, maxPages = 1 << 22;
        var reply = new byte[64];
        BinaryPrimitives.WriteUInt32LittleEndian(reply, 7);
        BinaryPrimitives.WriteUInt32LittleEndian(reply.AsSpan(4), Math.Min(minor, ProtocolMinor));
        BinaryPrimitives.WriteUInt32LittleEndian(reply.AsSpan(8), Math.Min(offered, readahead));
        BinaryPrimitives.WriteUInt32LittleEndian(reply.AsSpan(12), asyncRead | bigWrites | maxPages);
        BinaryPrimitives.WriteUInt16LittleEndian(reply.AsSpan(16), 64); // max_background
        BinaryPrimitives.WriteUInt16LittleEndian(reply.AsSpan(18), 48); // congestion_threshold
        BinaryPrimitives.WriteUInt32LittleEndian(reply.AsSpan(20), MaxWrite);
        BinaryPrimitives.WriteUInt32LittleEndian(reply.AsSpan(24), 1); // time_gran
        BinaryPrimitives.WriteUInt16LittleEndian(reply.AsSpan(28), MaxWrite / 4096); // max_pages
        Reply(unique, reply);
        initialised.TrySetResult();
    }

    private async Task ReadAsync(ulong unique, long offset, int size, byte[] request)
    {
        ArrayPool<byte>.Shared.Return(request);
        var length = (int)Math.Clamp(file.Size - offset, 0, size);
        var reply = ArrayPool<byte>.Shared.Rent(OutHeader + length);
        try
        {
            await file.ReadAsync(offset, reply.AsMemory(OutHeader, length));
            Interlocked.Add(ref bytesRead, length);
            Send(reply, OutHeader + length, unique, 0);
        }
#pragma warning disable CA1031 // one failed read fails that read (QEMU stops the guest), never the server
        catch (Exception e)
#pragma warning restore CA1031
        {
            log($"read of {length} bytes at 0x{offset:x} failed: {e.Message}");
            Fail(unique, Errno.Io);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(reply);
        }
    }

    private async Task WriteAsync(ulong unique, long offset, int size, byte[] request)
    {
        try
        {
            if (offset < 0 || offset + size > file.Size || InHeader + 40 + size > request.Length)
            {
                Fail(unique, Errno.NoSpace);
                return;
            }
            await file.WriteAsync(offset, request.AsMemory(InHeader + 40, size));
            Interlocked.Add(ref bytesWritten, size);
            var written = new byte[8];
            BinaryPrimitives.WriteUInt32LittleEndian(written, (uint)size);
            Reply(unique, written);
        }
#pragma warning disable CA1031 // one failed write fails that write, never the server
        catch (Exception e)
#pragma warning restore CA1031
        {
            log($"write of {size} bytes at 0x{offset:x} failed: {e.Message}");
            Fail(unique, Errno.Io);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(request);
        }
    }

    private byte[] Attr(ulong node)
    {
        var attr = new byte[88];
        var isFile = node == FileId;
        BinaryPrimitives.WriteUInt64LittleEndian(attr, isFile ? FileId : RootId);
        BinaryPrimitives.WriteInt64LittleEndian(attr.AsSpan(8), isFile ? file.Size : 0);
        BinaryPrimitives.WriteInt64LittleEndian(attr.AsSpan(16), isFile ? (file.Size + 511) / 512 : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(attr.AsSpan(60), isFile ? 0x8180u : 0x41edu); // S_IFREG|0600, S_IFDIR|0755
        BinaryPrimitives.WriteUInt32LittleEndian(attr.AsSpan(64), isFile ? 1u : 2u); // nlink
        BinaryPrimitives.WriteUInt32LittleEndian(attr.AsSpan(80), 4096); // blksize
        return attr;
    }

    private byte[] AttrOut(ulong node)
    {
        var reply = new byte[16 + 88];
        BinaryPrimitives.WriteUInt64LittleEndian(reply, 3600); // attributes never change
        Attr(node).CopyTo(reply, 16);
        return reply;
    }

    private byte[] Entry()
    {
        var reply = new byte[40 + 88];
        BinaryPrimitives.WriteUInt64LittleEndian(reply, FileId);
        BinaryPrimitives.WriteUInt64LittleEndian(reply.AsSpan(16), 3600); // entry_valid
        BinaryPrimitives.WriteUInt64LittleEndian(reply.AsSpan(24), 3600); // attr_valid
        Attr(FileId).CopyTo(reply, 40);
        return reply;
    }

    /// <summary>The root folder's entries from <paramref name="offset"/> on: ".", "..", the file.</summary>
    private byte[] DirectoryEntries(long offset, int size)
    {
        using var entries = new MemoryStream();
        (ulong Id, string Name, uint Type)[] all = [(RootId, ".", 4), (RootId, "..", 4), (FileId, name, 8)];
        for (var i = (int)offset; i < all.Length; i++)
        {
            var n = Encoding.UTF8.GetBytes(all[i].Name);
            var entry = new byte[(24 + n.Length + 7) & ~7];
            BinaryPrimitives.WriteUInt64LittleEndian(entry, all[i].Id);
            BinaryPrimitives.WriteUInt64LittleEndian(entry.AsSpan(8), (ulong)(i + 1));
            BinaryPrimitives.WriteUInt32LittleEndian(entry.AsSpan(16), (uint)n.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(entry.AsSpan(20), all[i].Type);
            n.CopyTo(entry, 24);
            if (entries.Length + entry.Length > size)
            {
                break;
            }
            entries.Write(entry);
        }
        return entries.ToArray();
    }

    private void Reply(ulong unique, ReadOnlySpan<byte> payload)
    {
        var reply = ArrayPool<byte>.Shared.Rent(OutHeader + payload.Length);
        payload.CopyTo(reply.AsSpan(OutHeader));
        Send(reply, OutHeader + payload.Length, unique, 0);
        ArrayPool<byte>.Shared.Return(reply);
    }

    private void Fail(ulong unique, Errno error)
    {
        Span<byte> reply = stackalloc byte[OutHeader];
        Header(reply, OutHeader, unique, -(int)error);
        Write(reply);
    }

    private void Send(byte[] reply, int length, ulong unique, int error)
    {
        Header(reply, length, unique, error);
        Write(reply.AsSpan(0, length));
    }

    private static void Header(Span<byte> reply, int length, ulong unique, int error)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(reply, (uint)length);
        BinaryPrimitives.WriteInt32LittleEndian(reply[4..], error);
        BinaryPrimitives.WriteUInt64LittleEndian(reply[8..], unique);
    }

    private unsafe void Write(ReadOnlySpan<byte> reply)
    {
        fixed (byte* p = reply)
        {
            // ENOENT: the request was interrupted meanwhile; the kernel no longer waits for it.
            if (Libc.Write(fd, p, reply.Length) < 0 && System.Runtime.InteropServices.Marshal.GetLastPInvokeError() is not (Libc.NoEntry or Libc.NoDevice))
            {
                log(Libc.Error("FUSE reply failed"));
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) == 1)
        {
            return;
        }
        // A lazy unmount ends the connection: the reader's read fails with ENODEV and it stops.
        if (Libc.Unmount(mountpoint, Libc.Detach) != 0)
        {
            log(Libc.Error($"unmounting {mountpoint} failed"));
        }
        await Task.Run(() => reader.Join(TimeSpan.FromSeconds(10)));
        Libc.Close(fd);
    }

    private enum Opcode : uint
    {
        Lookup = 1,
        Forget = 2,
        GetAttr = 3,
        SetAttr = 4,
        Open = 14,
        Read = 15,
        Write = 16,
        StatFs = 17,
        Release = 18,
        Fsync = 20,
        Flush = 25,
        Init = 26,
        OpenDir = 27,
        ReadDir = 28,
        ReleaseDir = 29,
        FsyncDir = 30,
        Access = 34,
        Interrupt = 36,
        Destroy = 38,
        BatchForget = 42,
    }

    private enum Errno
    {
        NotPermitted = 1,
        NoEntry = 2,
        Io = 5,
        NoSpace = 28,
        NotImplemented = 38,
        Protocol = 71,
    }
}
