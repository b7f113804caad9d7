using System.Buffers.Binary;
using SEmigrate.Contracts;

namespace SEmigrate.Introspection.Classification;

/// <summary>The class of every guest page, by page number: far too large for a workflow payload, so
/// the source keeps it in a file (2 bits a page, with the counts in the header) and the main host gets
/// it, with each class as the mode puts it on the wire, as the sealed manifest.</summary>
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

    /// <summary>The same pages with each class mapped (how a mode puts classes on the wire).</summary>
    public ClassificationMap Select(Func<PageClass, PageClass> map) =>
        new([.. classes.Select(c => c == NotGuest ? c : (byte)map((PageClass)c))]);

    public void Save(string path)
    {
        File.WriteAllBytes(path + ".tmp", ToBytes());
        File.Move(path + ".tmp", path, overwrite: true);
    }

    public static ClassificationMap Load(string path) => FromBytes(File.ReadAllBytes(path), path);

    /// <summary>The size of <see cref="ToBytes"/>'s form.</summary>
    public int ByteSize => ByteSizeFor(PfnLimit);

    /// <summary>The size of <see cref="ToBytes"/>'s form for a map of <paramref name="pfnLimit"/> pages.</summary>
    public static int ByteSizeFor(ulong pfnLimit) => checked(40 + (int)((pfnLimit + 3) / 4));

    /// <summary>The map's form in files and in the manifest: a 40-byte header (magic, page count, counts
    /// per class), then 2 bits a page.</summary>
    public byte[] ToBytes()
    {
        var data = new byte[ByteSize];
        Magic.CopyTo(data);
        BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(8), PfnLimit);
        BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(16), Zero);
        BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(24), Plain);
        BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(32), Sealed);
        for (var i = 0; i < classes.Length; i++)
        {
            data[40 + (i >> 2)] |= (byte)(classes[i] << ((i & 3) * 2));
        }
        return data;
    }

    /// <summary>Parses <see cref="ToBytes"/>'s form; <paramref name="what"/> names it in errors.</summary>
    public static ClassificationMap FromBytes(ReadOnlySpan<byte> data, string what = "classification map")
    {
        if (data.Length < 40 || !data[..8].SequenceEqual(Magic))
        {
            throw new InvalidDataException($"{what} is not a classification map");
        }
        var limit = BinaryPrimitives.ReadUInt64LittleEndian(data[8..]);
        if (limit > int.MaxValue || (ulong)data.Length != 40 + (limit + 3) / 4)
        {
            throw new InvalidDataException($"{what}: size does not match its page count {limit}");
        }
        var classes = new byte[limit];
        for (var i = 0; i < classes.Length; i++)
        {
            classes[i] = (byte)((data[40 + (i >> 2)] >> ((i & 3) * 2)) & 3);
        }
        var map = new ClassificationMap(classes);
        if (map.Zero != BinaryPrimitives.ReadUInt64LittleEndian(data[16..])
            || map.Plain != BinaryPrimitives.ReadUInt64LittleEndian(data[24..])
            || map.Sealed != BinaryPrimitives.ReadUInt64LittleEndian(data[32..]))
        {
            throw new InvalidDataException($"{what}: the page classes do not add up to the counts in its header: corrupt");
        }
        return map;
    }
}
