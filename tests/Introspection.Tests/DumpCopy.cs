using System.Buffers.Binary;
using SEmigrate.Guest.Memory;

namespace SEmigrate.Introspection.Tests;

/// <summary>A private copy of a dump that a test may corrupt: the guest's compromised kernel, played
/// by writing to guest-physical addresses.</summary>
internal sealed class DumpCopy : IDisposable
{
    private readonly IReadOnlyList<MemoryRange> ranges;

    public DumpCopy(string source, long? truncateTo = null)
    {
        Path = System.IO.Path.Combine(Directory.CreateTempSubdirectory("semigrate-corrupt-").FullName, "memory.elf");
        File.Copy(source, Path);
        using (var memory = GuestMemory.OpenElfDump(source))
        {
            ranges = memory.Ranges;
        }
        if (truncateTo is { } length)
        {
            using var f = new FileStream(Path, FileMode.Open);
            f.SetLength(length);
        }
    }

    public string Path { get; }

    public void WriteUInt64(ulong physicalAddress, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        Write(physicalAddress, b);
    }

    /// <summary>Writes <paramref name="bytes"/> from <paramref name="physicalAddress"/> on, within one range of the dump.</summary>
    public void Write(ulong physicalAddress, ReadOnlySpan<byte> bytes)
    {
        var pfn = physicalAddress >> GuestMemory.PageShift;
        var range = ranges.Single(r => pfn >= r.FirstPfn && pfn < r.EndPfn);
        using var f = new FileStream(Path, FileMode.Open, FileAccess.Write);
        f.Position = (long)(range.FileOffset + physicalAddress - (range.FirstPfn << GuestMemory.PageShift));
        f.Write(bytes);
    }

    /// <summary>Writes <paramref name="bytes"/> at <paramref name="fileOffset"/> of the dump file itself (its ELF headers and notes).</summary>
    public void WriteAt(long fileOffset, ReadOnlySpan<byte> bytes)
    {
        using var f = new FileStream(Path, FileMode.Open, FileAccess.Write);
        f.Position = fileOffset;
        f.Write(bytes);
    }

    /// <summary>Where the text of the dump's VMCOREINFO note starts in the file, and the text (up to its first NUL).</summary>
    public (long At, string Text) VmcoreInfoNote()
    {
        var head = new byte[1 << 20];
        using (var f = File.OpenRead(Path))
        {
            head = head[..f.ReadAtLeast(head, head.Length, throwOnEndOfStream: false)];
        }
        var at = head.AsSpan().IndexOf("OSRELEASE="u8);
        var length = head.AsSpan(at).IndexOf((byte)0);
        return (at, System.Text.Encoding.ASCII.GetString(head, at, length));
    }

    /// <summary>Sets <paramref name="key"/> to <paramref name="value"/> in the VMCOREINFO note, as the guest's kernel
    /// could have written it, within the note's own room: OFFSET(...) lines, which introspection does not read,
    /// give way to a longer value.</summary>
    public void ForgeVmcoreInfo(string key, string value)
    {
        var (at, text) = VmcoreInfoNote();
        var lines = text.Split('\n').ToList();
        lines[lines.FindIndex(l => l.StartsWith(key + "=", StringComparison.Ordinal))] = $"{key}={value}";
        while (string.Join('\n', lines).Length > text.Length)
        {
            lines.RemoveAt(lines.FindLastIndex(l => l.StartsWith("OFFSET(", StringComparison.Ordinal)));
        }
        var forged = new byte[text.Length]; // NUL-padded, as the note's tail is
        System.Text.Encoding.ASCII.GetBytes(string.Join('\n', lines)).CopyTo(forged, 0);
        WriteAt(at, forged);
    }

    public void Dispose() => Directory.Delete(System.IO.Path.GetDirectoryName(Path)!, recursive: true);
}
