using System.Security.Cryptography;
using System.Text;

namespace SEmigrate.Sealing;

/// <summary>A migration's data key (AES-256), generated at the source. It only ever travels wrapped
/// for the main host (<see cref="KeyWrap"/>); ToString never shows it.
/// Pages are sealed under per-epoch subkeys, HKDF(data key, VM, epoch): see <see cref="PageSealer"/>
/// for why epochs make nonces unique.</summary>
public sealed class DataKey : IDisposable
{
    public const int Size = 32;
    private readonly byte[] key;
    private readonly HashSet<(Guid Vm, uint Epoch)> sealingEpochs = [];

    private DataKey(byte[] key) => this.key = key;

    public static DataKey Generate() => new(RandomNumberGenerator.GetBytes(Size));

    /// <summary>For unwrapping and for a sub-host's own at-rest key; the bytes are copied.</summary>
    public static DataKey FromBytes(ReadOnlySpan<byte> bytes) =>
        bytes.Length == Size ? new DataKey(bytes.ToArray()) : throw new CryptographicException($"a data key is {Size} bytes, not {bytes.Length}");

    /// <summary>The key bytes, for wrapping only.</summary>
    internal ReadOnlySpan<byte> Bytes => key;

    internal byte[] Subkey(Guid vm, uint epoch)
    {
        Span<byte> info = stackalloc byte[32];
        var n = Encoding.ASCII.GetBytes("SEmigrate page key v1", info);
        BitConverter.TryWriteBytes(info[n..], epoch);
        return HKDF.DeriveKey(HashAlgorithmName.SHA256, key, Size, vm.ToByteArray(), info[..(n + 4)].ToArray());
    }

    /// <summary>A sealer for a fresh epoch of a VM. Each (VM, epoch) subkey is sealed under by one
    /// sealer only: asking twice for the same one throws, because the second would repeat nonces.</summary>
    public PageSealer CreateSealer(Guid vm, uint epoch)
    {
        lock (sealingEpochs)
        {
            if (!sealingEpochs.Add((vm, epoch)))
            {
                throw new InvalidOperationException($"key epoch {epoch} already has a sealer: nonces would repeat");
            }
        }
        return new PageSealer(Subkey(vm, epoch), vm, epoch);
    }

    /// <summary>The key a VM's memory digests are MACs under (DigestMemory): derived one way, so its holder
    /// can compare memory but open no page.</summary>
    public byte[] DigestKey(Guid vm) => HKDF.DeriveKey(HashAlgorithmName.SHA256, key, Size, vm.ToByteArray(), Encoding.ASCII.GetBytes("SEmigrate memory digest v1"));

    /// <summary>The allenc baseline's channel key for one sub-host: derived from this key, the VM and the
    /// host, so a sub-host that decrypts (as that baseline's do) holds its own key only, never the
    /// migration's data key, and opens no other host's pages.</summary>
    public DataKey ChannelKey(Guid vm, string host) =>
        new(HKDF.DeriveKey(HashAlgorithmName.SHA256, key, Size, vm.ToByteArray(), Encoding.UTF8.GetBytes($"SEmigrate allenc channel v1|{host}")));

    /// <summary>The main host's receipt for a switch-over: an HMAC under a key derived from this one, over the
    /// migration, VM and main host. Only who holds the data key (the source, and the main host that unwrapped
    /// it) can make one, so a forged "the VM has left" cannot end the source's copy.</summary>
    public byte[] Receipt(Guid migrationId, Guid vm, string main)
    {
        var receiptKey = HKDF.DeriveKey(HashAlgorithmName.SHA256, key, Size, vm.ToByteArray(), Encoding.ASCII.GetBytes("SEmigrate switch-over receipt v1"));
        try
        {
            return HMACSHA256.HashData(receiptKey, Encoding.UTF8.GetBytes($"{migrationId:N}|{vm:N}|{main}"));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(receiptKey);
        }
    }

    /// <summary>Whether <paramref name="receipt"/> is this key's receipt for the switch-over (compared in constant time).</summary>
    public bool IsReceipt(ReadOnlySpan<byte> receipt, Guid migrationId, Guid vm, string main) =>
        CryptographicOperations.FixedTimeEquals(receipt, Receipt(migrationId, vm, main));

    /// <summary>Whether <paramref name="other"/> is the same key (compared in constant time).</summary>
    public bool Matches(DataKey other) => CryptographicOperations.FixedTimeEquals(key, other.key);

    public override string ToString() => "DataKey(hidden)";

    public void Dispose() => CryptographicOperations.ZeroMemory(key);
}
