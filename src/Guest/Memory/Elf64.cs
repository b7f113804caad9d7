using System.Buffers.Binary;

namespace SEmigrate.Guest.Memory;

/// <summary>Just enough of ELF64 (little-endian) for QEMU dumps (program headers, notes) and vmlinux
/// (sections): both are read from a mapping, so this works on spans, never copies.</summary>
public static class Elf64
{
    public const uint PtLoad = 1;
    public const uint PtNote = 4;

    public sealed record ProgramHeader(uint Type, ulong Offset, ulong VirtualAddress, ulong PhysicalAddress, ulong FileSize, ulong MemorySize);

    public sealed record Section(string Name, uint Type, ulong Offset, ulong Size);

    public sealed record Note(string Name, uint Type, ulong DescriptorOffset, int DescriptorSize);

    public static bool IsElf64(ReadOnlySpan<byte> header) =>
        header.Length >= 64 && header[0] == 0x7f && header[1] == (byte)'E' && header[2] == (byte)'L' && header[3] == (byte)'F'
        && header[4] == 2 /* 64-bit */ && header[5] == 1 /* little-endian */;

    private static void Require(ReadOnlySpan<byte> header)
    {
        if (!IsElf64(header))
        {
            throw new InvalidDataException("not a 64-bit little-endian ELF file");
        }
    }

    public static IReadOnlyList<ProgramHeader> ProgramHeaders(ReadOnlySpan<byte> file)
    {
        Require(file);
        var offset = BinaryPrimitives.ReadUInt64LittleEndian(file[32..]);
        var size = BinaryPrimitives.ReadUInt16LittleEndian(file[54..]);
        var count = BinaryPrimitives.ReadUInt16LittleEndian(file[56..]);
        if (size < 56 || offset + (ulong)size * count > (ulong)file.Length)
        {
            throw new InvalidDataException("ELF program header table lies outside the file");
        }
        var result = new List<ProgramHeader>(count);
        for (var i = 0; i < count; i++)
        {
            var h = file.Slice((int)(offset + (ulong)(i * size)), 56);
            result.Add(new ProgramHeader(
                BinaryPrimitives.ReadUInt32LittleEndian(h),
                BinaryPrimitives.ReadUInt64LittleEndian(h[8..]),
                BinaryPrimitives.ReadUInt64LittleEndian(h[16..]),
                BinaryPrimitives.ReadUInt64LittleEndian(h[24..]),
                BinaryPrimitives.ReadUInt64LittleEndian(h[32..]),
                BinaryPrimitives.ReadUInt64LittleEndian(h[40..])));
        }
        return result;
    }

    public static IReadOnlyList<Section> Sections(ReadOnlySpan<byte> file)
    {
        Require(file);
        var offset = BinaryPrimitives.ReadUInt64LittleEndian(file[40..]);
        var size = BinaryPrimitives.ReadUInt16LittleEndian(file[58..]);
        var count = BinaryPrimitives.ReadUInt16LittleEndian(file[60..]);
        var namesIndex = BinaryPrimitives.ReadUInt16LittleEndian(file[62..]);
        if (size < 64 || namesIndex >= count || offset + (ulong)size * count > (ulong)file.Length)
        {
            throw new InvalidDataException("ELF section header table lies outside the file");
        }
        var names = file.Slice((int)(offset + (ulong)(namesIndex * size)), 64);
        var namesAt = BinaryPrimitives.ReadUInt64LittleEndian(names[24..]);
        var namesSize = BinaryPrimitives.ReadUInt64LittleEndian(names[32..]);
        var result = new List<Section>(count);
        for (var i = 0; i < count; i++)
        {
            var h = file.Slice((int)(offset + (ulong)(i * size)), 64);
            var nameOffset = BinaryPrimitives.ReadUInt32LittleEndian(h);
            var name = nameOffset < namesSize ? CString(file[(int)(namesAt + nameOffset)..]) : "";
            result.Add(new Section(name,
                BinaryPrimitives.ReadUInt32LittleEndian(h[4..]),
                BinaryPrimitives.ReadUInt64LittleEndian(h[24..]),
                BinaryPrimitives.ReadUInt64LittleEndian(h[32..])));
        }
        return result;
    }

    /// <summary>The notes in a PT_NOTE segment or SHT_NOTE section; offsets are file offsets.</summary>
    public static IReadOnlyList<Note> Notes(ReadOnlySpan<byte> file, ulong offset, ulong size)
    {
        var result = new List<Note>();
        var end = Math.Min(offset + size, (ulong)file.Length);
        var at = offset;
        while (at + 12 <= end)
        {
            var nameSize = BinaryPrimitives.ReadUInt32LittleEndian(file[(int)at..]);
            var descSize = BinaryPrimitives.ReadUInt32LittleEndian(file[(int)(at + 4)..]);
            var type = BinaryPrimitives.ReadUInt32LittleEndian(file[(int)(at + 8)..]);
            var nameAt = at + 12;
            var descAt = nameAt + Align4(nameSize);
            if (nameSize > 4096 || descSize > int.MaxValue || descAt + descSize > end)
            {
                break;
            }
            var name = CString(file.Slice((int)nameAt, (int)nameSize));
            result.Add(new Note(name, type, descAt, (int)descSize));
            at = descAt + Align4(descSize);
        }
        return result;
    }

    private static ulong Align4(ulong n) => (n + 3) & ~3UL;

    public static string CString(ReadOnlySpan<byte> bytes)
    {
        var end = bytes.IndexOf((byte)0);
        return System.Text.Encoding.ASCII.GetString(end < 0 ? bytes : bytes[..end]);
    }
}
