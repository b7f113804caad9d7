using System.Buffers.Binary;
using System.Text;

namespace SEmigrate.Introspection.Kernel;

/// <summary>The kernel's BPF Type Format: every struct's members with their offsets, sizes, arrays
/// and enums. Enough of it to answer "offset of zone.free_area", following anonymous members.</summary>
public sealed class Btf
{
    private const ushort Magic = 0xeB9F;

    private enum Kind
    {
        Int = 1, Ptr, Array, Struct, Union, Enum, Fwd, Typedef, Volatile, Const, Restrict, Func, FuncProto, Var, Datasec,
        Float, DeclTag, TypeTag, Enum64,
    }

    private readonly record struct BtfType(Kind Kind, string Name, uint SizeOrType, int MembersAt, int Vlen, bool KindFlag);

    private readonly record struct Member(string Name, uint Type, uint BitOffset);

    private readonly List<BtfType> types = [default]; // type id 0 is void
    private readonly List<Member> members = [];
    private readonly List<(uint ElementType, uint Count)> arrays = [];
    private readonly List<(string Name, long Value)> enumerators = [];
    private readonly Dictionary<string, int> structsByName = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> enumsByName = new(StringComparer.Ordinal);

    public Btf(ReadOnlySpan<byte> data)
    {
        if (data.Length < 24 || BinaryPrimitives.ReadUInt16LittleEndian(data) != Magic)
        {
            throw new InvalidDataException("not BTF data (bad magic)");
        }
        var headerLength = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
        var typeOff = BinaryPrimitives.ReadUInt32LittleEndian(data[8..]);
        var typeLen = BinaryPrimitives.ReadUInt32LittleEndian(data[12..]);
        var strOff = BinaryPrimitives.ReadUInt32LittleEndian(data[16..]);
        var strLen = BinaryPrimitives.ReadUInt32LittleEndian(data[20..]);
        if ((ulong)headerLength + typeOff + typeLen > (ulong)data.Length || (ulong)headerLength + strOff + strLen > (ulong)data.Length)
        {
            throw new InvalidDataException("BTF sections lie outside the data");
        }
        var typeData = data.Slice((int)(headerLength + typeOff), (int)typeLen);
        var strings = data.Slice((int)(headerLength + strOff), (int)strLen);
        var nameCache = new Dictionary<uint, string>();
        string Name(uint offset, ReadOnlySpan<byte> strs)
        {
            if (offset == 0 || offset >= strs.Length)
            {
                return "";
            }
            if (!nameCache.TryGetValue(offset, out var s))
            {
                var tail = strs[(int)offset..];
                var end = tail.IndexOf((byte)0);
                s = Encoding.ASCII.GetString(end < 0 ? tail : tail[..end]);
                nameCache[offset] = s;
            }
            return s;
        }

        var at = 0;
        while (at + 12 <= typeData.Length)
        {
            var nameOff = BinaryPrimitives.ReadUInt32LittleEndian(typeData[at..]);
            var info = BinaryPrimitives.ReadUInt32LittleEndian(typeData[(at + 4)..]);
            var sizeOrType = BinaryPrimitives.ReadUInt32LittleEndian(typeData[(at + 8)..]);
            at += 12;
            var kind = (Kind)((info >> 24) & 0x1f);
            var vlen = (int)(info & 0xffff);
            var kindFlag = (info >> 31) != 0;
            var name = Name(nameOff, strings);
            // What follows the type (vlen is up to 65,535 entries): inside the data, before a member is read.
            var follows = kind switch
            {
                Kind.Int or Kind.Var or Kind.DeclTag => 4L,
                Kind.Array => 12,
                Kind.Struct or Kind.Union or Kind.Enum64 or Kind.Datasec => 12L * vlen,
                Kind.Enum or Kind.FuncProto => 8L * vlen,
                _ => 0,
            };
            if (at + follows > typeData.Length)
            {
                throw new InvalidDataException($"BTF type {types.Count} ({kind}, vlen {vlen}) runs past the type section");
            }
            var membersAt = -1;
            switch (kind)
            {
                case Kind.Int or Kind.Var or Kind.DeclTag:
                    at += 4;
                    break;
                case Kind.Array:
                    membersAt = arrays.Count;
                    arrays.Add((BinaryPrimitives.ReadUInt32LittleEndian(typeData[at..]), BinaryPrimitives.ReadUInt32LittleEndian(typeData[(at + 8)..])));
                    at += 12;
                    break;
                case Kind.Struct or Kind.Union:
                    membersAt = members.Count;
                    for (var i = 0; i < vlen; i++, at += 12)
                    {
                        members.Add(new Member(
                            Name(BinaryPrimitives.ReadUInt32LittleEndian(typeData[at..]), strings),
                            BinaryPrimitives.ReadUInt32LittleEndian(typeData[(at + 4)..]),
                            BinaryPrimitives.ReadUInt32LittleEndian(typeData[(at + 8)..])));
                    }
                    if (kind == Kind.Struct && name.Length > 0)
                    {
                        structsByName.TryAdd(name, types.Count);
                    }
                    break;
                case Kind.Enum:
                    membersAt = enumerators.Count;
                    for (var i = 0; i < vlen; i++, at += 8)
                    {
                        enumerators.Add((Name(BinaryPrimitives.ReadUInt32LittleEndian(typeData[at..]), strings),
                            BinaryPrimitives.ReadInt32LittleEndian(typeData[(at + 4)..])));
                    }
                    if (name.Length > 0)
                    {
                        enumsByName.TryAdd(name, types.Count);
                    }
                    break;
                case Kind.Enum64:
                    membersAt = enumerators.Count;
                    for (var i = 0; i < vlen; i++, at += 12)
                    {
                        var lo = BinaryPrimitives.ReadUInt32LittleEndian(typeData[(at + 4)..]);
                        var hi = BinaryPrimitives.ReadUInt32LittleEndian(typeData[(at + 8)..]);
                        enumerators.Add((Name(BinaryPrimitives.ReadUInt32LittleEndian(typeData[at..]), strings), (long)(((ulong)hi << 32) | lo)));
                    }
                    if (name.Length > 0)
                    {
                        enumsByName.TryAdd(name, types.Count);
                    }
                    break;
                case Kind.FuncProto:
                    at += 8 * vlen;
                    break;
                case Kind.Datasec:
                    at += 12 * vlen;
                    break;
                case Kind.Ptr or Kind.Fwd or Kind.Typedef or Kind.Volatile or Kind.Const or Kind.Restrict or Kind.Func
                    or Kind.Float or Kind.TypeTag:
                    break;
                default:
                    throw new InvalidDataException($"BTF type {types.Count} has unknown kind {(int)kind}");
            }
            types.Add(new BtfType(kind, name, sizeOrType, membersAt, vlen, kindFlag));
        }
    }

    /// <summary>sizeof(struct name).</summary>
    public int SizeOf(string structName) => (int)types[StructId(structName)].SizeOrType;

    /// <summary>Byte offset of a member path ("free_area", "vm_stat", "tasks.next") in a struct,
    /// looking through anonymous structs and unions.</summary>
    public int OffsetOf(string structName, string memberPath) => (int)Resolve(structName, memberPath).Offset;

    /// <summary>Size in bytes of a member path's type.</summary>
    public int MemberSize(string structName, string memberPath) => (int)SizeOfType(Resolve(structName, memberPath).Type);

    /// <summary>Element count of an array member (free_area[MAX_ORDER] gives MAX_ORDER).</summary>
    public int ArrayLength(string structName, string memberPath)
    {
        var t = Type(Strip(Resolve(structName, memberPath).Type));
        return t.Kind == Kind.Array
            ? (int)arrays[t.MembersAt].Count
            : throw new KeyNotFoundException($"{structName}.{memberPath} is not an array");
    }

    /// <summary>The value of an enumerator (NR_FREE_PAGES, ZONE_NORMAL, ...) in a named enum.</summary>
    public long EnumValue(string enumName, string enumerator)
    {
        if (!enumsByName.TryGetValue(enumName, out var id))
        {
            throw new KeyNotFoundException($"no enum {enumName} in BTF");
        }
        var t = types[id];
        for (var i = 0; i < t.Vlen; i++)
        {
            if (enumerators[t.MembersAt + i].Name == enumerator)
            {
                return enumerators[t.MembersAt + i].Value;
            }
        }
        throw new KeyNotFoundException($"no {enumerator} in enum {enumName}");
    }

    private int StructId(string name) =>
        structsByName.TryGetValue(name, out var id) ? id : throw new KeyNotFoundException($"no struct {name} in BTF");

    private (ulong Offset, uint Type) Resolve(string structName, string memberPath)
    {
        uint type = (uint)StructId(structName);
        ulong offset = 0;
        foreach (var name in memberPath.Split('.'))
        {
            var found = Find(Strip(type), name)
                ?? throw new KeyNotFoundException($"no member {name} in {structName}.{memberPath}");
            offset += found.Offset;
            type = found.Type;
        }
        return (offset, type);
    }

    /// <summary>How deep anonymous members and arrays of arrays may nest: the kernel's go a few levels; a
    /// BTF blob whose types refer to themselves must end in an error, not a stack overflow.</summary>
    private const int MaxDepth = 32;

    /// <summary>Finds a member by name, descending into anonymous members; offsets in bytes.</summary>
    private (ulong Offset, uint Type)? Find(uint typeId, string name, int depth = 0)
    {
        if (depth > MaxDepth)
        {
            throw new InvalidDataException($"BTF anonymous members nest deeper than {MaxDepth} looking for {name}: a type that contains itself?");
        }
        var t = Type(typeId);
        if (t.Kind is not (Kind.Struct or Kind.Union))
        {
            return null;
        }
        for (var i = 0; i < t.Vlen; i++)
        {
            var m = members[t.MembersAt + i];
            var bits = t.KindFlag ? m.BitOffset & 0xffffff : m.BitOffset;
            if (m.Name == name)
            {
                return (bits / 8, m.Type);
            }
            if (m.Name.Length == 0 && Find(Strip(m.Type), name, depth + 1) is { } inner)
            {
                return (bits / 8 + inner.Offset, inner.Type);
            }
        }
        return null;
    }

    private BtfType Type(uint id) =>
        id < types.Count ? types[(int)id] : throw new InvalidDataException($"BTF refers to type {id}; it has {types.Count}");

    /// <summary>Follows typedefs and qualifiers to the underlying type.</summary>
    private uint Strip(uint typeId)
    {
        for (var guard = 0; guard < 64; guard++)
        {
            var t = Type(typeId);
            if (t.Kind is not (Kind.Typedef or Kind.Volatile or Kind.Const or Kind.Restrict or Kind.TypeTag))
            {
                return typeId;
            }
            typeId = t.SizeOrType;
        }
        throw new InvalidDataException($"BTF type chain from {typeId} does not end");
    }

    private ulong SizeOfType(uint typeId, int depth = 0)
    {
        if (depth > MaxDepth)
        {
            throw new InvalidDataException($"BTF arrays nest deeper than {MaxDepth} at type {typeId}: a type that contains itself?");
        }
        var t = Type(Strip(typeId));
        return t.Kind switch
        {
            Kind.Int or Kind.Struct or Kind.Union or Kind.Enum or Kind.Enum64 or Kind.Float => t.SizeOrType,
            Kind.Ptr => 8,
            Kind.Array => ArraySize(arrays[t.MembersAt], depth),
            _ => throw new InvalidDataException($"BTF type {typeId} ({t.Kind}) has no size"),
        };
    }

    // At most (2^32 - 1)^2, which a ulong holds; more than 2 GiB is no kernel structure, and would not fit an int offset.
    private ulong ArraySize((uint ElementType, uint Count) array, int depth) =>
        array.Count * SizeOfType(array.ElementType, depth + 1) is var size && size <= int.MaxValue
            ? size
            : throw new InvalidDataException($"BTF array of {array.Count} elements of type {array.ElementType} is larger than 2 GiB: no kernel structure is");
}
