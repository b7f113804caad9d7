using System.IO.MemoryMappedFiles;
using SEmigrate.Guest.Fuse;

namespace SEmigrate.Guest.Tests;

/// <summary>The FUSE server on the real kernel (as root): the file reads and writes through to its
/// backing, can be mapped shared, and an invalidated range is read from the backing again.</summary>
public sealed class FuseRamFileTests : IAsyncLifetime
{
    private const long Size = 64 << 20;
    private readonly string mountpoint = Directory.CreateTempSubdirectory("semigrate-fuse-").FullName;
    private readonly ArrayBacking backing = new(Size);
    private FuseRamFile fuse = null!;

    public async ValueTask InitializeAsync() => fuse = await FuseRamFile.MountAsync(mountpoint, "ram", backing);

    public async ValueTask DisposeAsync()
    {
        await fuse.DisposeAsync();
        Directory.Delete(mountpoint);
    }

    [Fact]
    public async Task The_file_has_its_size_and_reads_and_writes_through_to_the_backing()
    {
        Assert.Equal(["ram"], Directory.GetFiles(mountpoint).Select(Path.GetFileName));
        Assert.Equal(Size, new FileInfo(fuse.FilePath).Length);
        backing.Fill(3 << 20, 8192, 0x5a);

        await using (var file = new FileStream(fuse.FilePath, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            var read = new byte[8192];
            file.Position = 3 << 20;
            await file.ReadExactlyAsync(read, TestContext.Current.CancellationToken);
            Assert.All(read, b => Assert.Equal(0x5a, b));

            file.Position = 5 << 20;
            await file.WriteAsync(Enumerable.Repeat((byte)0xc3, 4096).ToArray(), TestContext.Current.CancellationToken);
            file.Flush(flushToDisk: true);
        }
        Assert.All(backing.Bytes(5 << 20, 4096), b => Assert.Equal(0xc3, b));
        Assert.True(fuse.Traffic.Read >= 8192 && fuse.Traffic.Written >= 4096, $"{fuse.Traffic}");
    }

    [Fact]
    public void A_shared_mapping_writes_back_and_an_invalidated_range_is_read_again()
    {
        using (var map = MemoryMappedFile.CreateFromFile(fuse.FilePath, FileMode.Open, null, 0, MemoryMappedFileAccess.ReadWrite))
        using (var view = map.CreateViewAccessor(0, Size))
        {
            Assert.Equal(0, view.ReadByte(7 << 20));
            view.Write(7 << 20, (byte)0x77);
            view.Flush(); // msync: the dirty page goes to the backing
            Assert.Equal(0x77, backing.Bytes(7 << 20, 1)[0]);

            // The page cache keeps what was read: a change behind its back is not seen...
            const long clean = (9 << 20) + 4096, dirty = 9 << 20;
            backing.Fill(dirty, 8192, 0x11);
            Assert.Equal(0x11, view.ReadByte(clean));
            backing.Fill(clean, 4096, 0x22);
            Assert.Equal(0x11, view.ReadByte(clean));

            // ...until the range is invalidated: dirty pages go back first, then the next touch reads anew.
            view.Write(dirty, (byte)0x99);
            fuse.Invalidate(9 << 20, 2 << 20);
            Assert.Equal(0x99, backing.Bytes(dirty, 1)[0]);
            Assert.Equal(0x22, view.ReadByte(clean));
        }
    }

    [Fact]
    public async Task A_read_the_backing_cannot_answer_fails_alone_and_the_server_goes_on()
    {
        backing.FailAt = 11 << 20;
        await using var file = new FileStream(fuse.FilePath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.None);
        file.Position = 11 << 20;
        await Assert.ThrowsAsync<IOException>(async () => await file.ReadExactlyAsync(new byte[4096], TestContext.Current.CancellationToken));

        backing.FailAt = -1;
        file.Position = 13 << 20;
        var page = new byte[4096];
        await file.ReadExactlyAsync(page, TestContext.Current.CancellationToken);
        Assert.All(page, b => Assert.Equal(0, b));
    }

    [Fact]
    public void The_serving_process_reads_its_own_file_as_guest_memory_with_reads_and_sees_pages_still_dirty_in_the_cache()
    {
        backing.Fill(11 << 20, 4096, 0x3c);
        using var map = MemoryMappedFile.CreateFromFile(fuse.FilePath, FileMode.Open, null, 0, MemoryMappedFileAccess.ReadWrite);
        using var view = map.CreateViewAccessor(0, Size);
        view.Write((12 << 20) + 5, (byte)0x42); // as a guest writes: dirty in the page cache, not yet at the backing
        Assert.Equal(0, backing.Bytes((12 << 20) + 5, 1)[0]);

        using var memory = Memory.GuestMemory.OpenImageByReads(fuse.FilePath);

        Assert.Equal((ulong)(Size / 4096), memory.GuestPages);
        Assert.All(memory.Page((11 << 20) / 4096).ToArray(), b => Assert.Equal(0x3c, b));
        Assert.Equal(0x42, memory.Page((12 << 20) / 4096)[5]);
        Assert.True(memory.TryReadUInt64((11 << 20) + 8, out var word));
        Assert.Equal(0x3c3c3c3c3c3c3c3cUL, word);
        Assert.False(memory.TryRead((ulong)Size - 4, new byte[8])); // past its end
    }

    /// <summary>A RAM file held in an array; reads at <see cref="FailAt"/> fail, as a dead sub-host's would.</summary>
    private sealed class ArrayBacking(long size) : IRamFile
    {
        private readonly byte[] bytes = new byte[size];

        public long Size => size;

        public long FailAt { get; set; } = -1;

        public void Fill(long offset, int length, byte value) => bytes.AsSpan((int)offset, length).Fill(value);

        public byte[] Bytes(long offset, int length) => bytes.AsSpan((int)offset, length).ToArray();

        public ValueTask ReadAsync(long offset, Memory<byte> data)
        {
            if (FailAt >= offset && FailAt < offset + data.Length)
            {
                throw new IOException("the page's host does not answer");
            }
            bytes.AsSpan((int)offset, data.Length).CopyTo(data.Span);
            return ValueTask.CompletedTask;
        }

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data)
        {
            data.Span.CopyTo(bytes.AsSpan((int)offset));
            return ValueTask.CompletedTask;
        }
    }
}
