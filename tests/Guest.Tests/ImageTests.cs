using SEmigrate.Guest.Memory;

namespace SEmigrate.Guest.Tests;

public sealed class ImageTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("semigrate-image-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    [Fact]
    public void A_large_sparse_image_costs_no_disk_and_reads_zero()
    {
        var path = Path.Combine(dir, "guest.img");
        using var memory = GuestMemory.CreateImage(path, 32L << 30);
        Assert.Equal((32UL << 30) / 4096, memory.GuestPages);
        Assert.True(memory.Page(memory.PfnLimit - 1).IndexOfAnyExcept((byte)0) < 0);
        var onDisk = new FileInfo(path).Length;
        Assert.Equal(32L << 30, onDisk);
        Assert.True(DiskUsage(path) < 1 << 20, $"a fresh 32 GiB image uses {DiskUsage(path)} bytes on disk");
    }

    [Fact]
    public void Written_pages_are_dirty_once_and_survive_a_reopen()
    {
        var path = Path.Combine(dir, "guest.img");
        var page = new byte[4096];
        page.AsSpan().Fill(0xab);
        using (var memory = GuestMemory.CreateImage(path, 1L << 30))
        {
            memory.WritePage(7, page);
            memory.WritePage(70_000, page);
            memory.WritePage(7, page);
            Assert.True(memory.IsDirty(7));
            Assert.False(memory.IsDirty(8));
            Assert.Equal([7UL, 70_000UL], memory.TakeDirtyPages());
            Assert.Empty(memory.TakeDirtyPages());
            memory.Flush();
        }
        using var again = GuestMemory.OpenImage(path);
        Assert.Equal(page, again.Page(70_000).ToArray());
        Assert.False(again.IsWritable);
        Assert.Throws<InvalidOperationException>(() => again.WritePage(1, page));
    }

    [Fact]
    public void Bad_sizes_and_pages_are_refused()
    {
        var path = Path.Combine(dir, "odd.img");
        File.WriteAllBytes(path, new byte[5000]);
        Assert.Throws<InvalidDataException>(() => GuestMemory.OpenImage(path));
        using var memory = GuestMemory.CreateImage(Path.Combine(dir, "small.img"), 1 << 20);
        Assert.Throws<ArgumentException>(() => memory.WritePage(0, new byte[100]));
        Assert.Throws<ArgumentOutOfRangeException>(() => memory.WritePage(256, new byte[4096]));
    }

    private static long DiskUsage(string path)
    {
        var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("du", ["-B1", path]) { RedirectStandardOutput = true })!;
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return long.Parse(output.Split('\t')[0], System.Globalization.CultureInfo.InvariantCulture);
    }
}
