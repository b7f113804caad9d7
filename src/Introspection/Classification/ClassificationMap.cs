using System.Buffers.Binary;
using SEmigrate.Contracts;

namespace SEmigrate.Introspection.Classification;

/// <summary>The class of every guest page, by page number: far too large for a workflow payload, so
/// it lives in a file (2 bits a page, with the counts in the header) and travels by reference.</summary>
public sealed class ClassificationMap
{
    /// <summary>The value for page numbers that are not guest memory (holes between ranges).</summary>
    public const byte NotGuest = 3;

    private static ReadOnlySpan<byte> Magic => "SEMCMAP1"u8;

    private readonly byte[] classes;

    public ClassificationMap(byte[] classes)
    {
        this.classes = classes;
        foreach (var c in classes)
        {
            switch (c)
            {
                case (byte)PageClass.Zero: Zero++; break;
                case (byte)PageClass.Plain: Plain++; break;
                case (byte)PageClass.Sealed: Sealed++; break;
            }
        }
    }

    public ulong PfnLimit => (ulong)classes.Length;

    public ulong Zero { get; }

    public ulong Plain { get; }

    public ulong Sealed { get; }

    public ulong GuestPages => Zero + Plain + Sealed;

    public bool IsGuestPage(ulong pfn) => pfn < PfnLimit && classes[pfn] != NotGuest;

    public PageClass this[ulong pfn] =>
        IsGuestPage(pfn) ? (PageClass)classes[pfn] : throw new ArgumentOutOfRangeException(nameof(pfn), $"page 0x{pfn:x} is not guest memory");

    public void Save(string path)
    {
        using var stream = new FileStream(path + ".tmp", FileMode.Create, FileAccess.Write);
        Span<byte> header = stackalloc byte[40];
        Magic.CopyTo(header);
        BinaryPrimitives.WriteUInt64LittleEndian(header[8..], PfnLimit);
        BinaryPrimitives.WriteUInt64LittleEndian(header[16..], Zero);
        BinaryPrimitives.WriteUInt64LittleEndian(header[24..], Plain);
        BinaryPrimitives.WriteUInt64LittleEndian(header[32..], Sealed);
        stream.Write(header);
        var packed = new byte[(classes.Length + 3) / 4];
        for (var i = 0; i < classes.Length; i++)
        {
            packed[i >> 2] |= (byte)(classes[i] << ((i & 3) * 2));
        }
        stream.Write(packed);
        stream.Close();
        File.Move(path + ".tmp", path, overwrite: true);
    }

    public static ClassificationMap Load(string path)
    {
        var data = File.ReadAllBytes(path);
        if (data.Length < 40 || !data.AsSpan(0, 8).SequenceEqual(Magic))
        {
            throw new InvalidDataException($"{path} is not a classification map");
        }
        var limit = BinaryPrimitives.ReadUInt64LittleEndian(data.AsSpan(8));
        if (limit > int.MaxValue || (ulong)data.Length != 40 + (limit + 3) / 4)
        {
            throw new InvalidDataException($"{path}: size does not match its page count {limit}");
        }
        var classes = new byte[limit];
        for (var i = 0; i < classes.Length; i++)
        {
            classes[i] = (byte)((data[40 + (i >> 2)] >> ((i & 3) * 2)) & 3);
        }
        var map = new ClassificationMap(classes);
        if (map.Zero != BinaryPrimitives.ReadUInt64LittleEndian(data.AsSpan(16))
            || map.Plain != BinaryPrimitives.ReadUInt64LittleEndian(data.AsSpan(24))
            || map.Sealed != BinaryPrimitives.ReadUInt64LittleEndian(data.AsSpan(32)))
        {
            throw new InvalidDataException($"{path}: the page classes do not add up to the counts in its header: corrupt");
        }
        return map;
    }
}
