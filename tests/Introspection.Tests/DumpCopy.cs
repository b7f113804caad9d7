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

    public void Dispose() => Directory.Delete(System.IO.Path.GetDirectoryName(Path)!, recursive: true);
}
