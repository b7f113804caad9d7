using System.Buffers.Binary;
using SEmigrate.Guest.Memory;

namespace SEmigrate.Guest.Tests;

public sealed class ElfDumpTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("semigrate-elf-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    /// <summary>A QEMU-like dump: PT_LOAD segments (physical address, pages), each page filled with
    /// its page number's low byte + 1 so every page is recognisable.</summary>
    private string WriteDump(params (ulong Phys, int Pages)[] segments)
    {
        var path = Path.Combine(dir, $"dump-{Guid.NewGuid():N}.elf");
        var headerSize = 64 + 56 * segments.Length;
        var dataStart = (headerSize + 4095) / 4096 * 4096;
        using var f = File.Create(path);
        var header = new byte[dataStart];
        new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F' }.CopyTo(header, 0);
        header[4] = 2;
        header[5] = 1;
        header[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(16), 4); // ET_CORE
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(32), 64);
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(54), 56);
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(56), (ushort)segments.Length);
        var offset = (ulong)dataStart;
        for (var i = 0; i < segments.Length; i++)
        {
            var h = header.AsSpan(64 + 56 * i);
            var bytes = (ulong)segments[i].Pages * 4096;
            BinaryPrimitives.WriteUInt32LittleEndian(h, Elf64.PtLoad);
            BinaryPrimitives.WriteUInt64LittleEndian(h[8..], offset);
            BinaryPrimitives.WriteUInt64LittleEndian(h[24..], segments[i].Phys);
            BinaryPrimitives.WriteUInt64LittleEndian(h[32..], bytes);
            BinaryPrimitives.WriteUInt64LittleEndian(h[40..], bytes);
            offset += bytes;
        }
        f.Write(header);
        foreach (var (phys, pages) in segments)
        {
            for (var p = 0; p < pages; p++)
            {
                var page = new byte[4096];
                Array.Fill(page, (byte)(((phys >> 12) + (ulong)p + 1) & 0xff));
                f.Write(page);
            }
        }
        return path;
    }

    [Fact]
    public void Reads_pages_by_number_across_ranges_with_a_hole_between()
    {
        var path = WriteDump((0, 16), (0x100000, 4));
        using var memory = GuestMemory.OpenElfDump(path);
        Assert.Equal([new MemoryRange(0, 16, 16, 4096), new MemoryRange(0x100, 4, 4, 4096 + 16 * 4096)], memory.Ranges);
        Assert.Equal(20UL, memory.GuestPages);
        Assert.Equal(0x104UL, memory.PfnLimit);
        Assert.Equal(6, memory.Page(5)[0]);
        Assert.Equal(0x02, memory.Page(0x101)[100]);
        Assert.False(memory.IsGuestPage(16));
        Assert.False(memory.IsPresent(0x50));
        Assert.Throws<ArgumentOutOfRangeException>(() => memory.Page(0x50).Length);
        Assert.Empty(memory.Problems);
    }

    [Fact]
    public void A_read_that_crosses_a_page_works_and_one_that_touches_a_hole_fails()
    {
        using var memory = GuestMemory.OpenElfDump(WriteDump((0, 16), (0x100000, 4)));
        var buffer = new byte[8];
        Assert.True(memory.TryRead(2 * 4096 - 4, buffer));
        Assert.Equal(new byte[] { 2, 2, 2, 2, 3, 3, 3, 3 }, buffer);
        Assert.False(memory.TryRead(16 * 4096 - 4, buffer));
        Assert.False(memory.TryRead(ulong.MaxValue - 3, buffer));
    }

    [Fact]
    public void A_truncated_dump_keeps_its_guest_pages_but_says_which_bytes_are_missing()
    {
        var path = WriteDump((0, 16), (0x100000, 4));
        using (var f = new FileStream(path, FileMode.Open))
        {
            f.SetLength(4096 + 10 * 4096 + 100); // 10 whole pages of the first segment survive
        }
        using var memory = GuestMemory.OpenElfDump(path);
        Assert.Equal(20UL, memory.GuestPages);
        Assert.True(memory.IsPresent(9));
        Assert.False(memory.IsPresent(10));
        Assert.True(memory.IsGuestPage(10));
        Assert.False(memory.IsPresent(0x100));
        Assert.Equal(2, memory.Problems.Count);
        Assert.All(memory.Problems, p => Assert.Contains("dump truncated", p, StringComparison.Ordinal));
    }

    [Fact]
    public void A_file_that_is_not_a_dump_is_refused_clearly()
    {
        var path = Path.Combine(dir, "text.elf");
        File.WriteAllText(path, new string('x', 5000));
        var e = Assert.Throws<InvalidDataException>(() => GuestMemory.OpenElfDump(path));
        Assert.Contains("not a 64-bit little-endian ELF", e.Message, StringComparison.Ordinal);
    }
}
