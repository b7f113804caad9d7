using SEmigrate.TestSupport;

namespace SEmigrate.Workers.Tests;

public class DoctorTests
{
    private static async Task<Dictionary<string, string>> RunningServices() =>
        new(await ServicesScript.SettingsAsync());

    private static string Line(string stdout, string check) =>
        stdout.Split('\n').SingleOrDefault(l => l.StartsWith(check + " ", StringComparison.Ordinal))
        ?? throw new Xunit.Sdk.XunitException($"no '{check}' line in:\n{stdout}");

    [Fact]
    public async Task Reports_every_service_ok_when_they_run()
    {
        var env = await RunningServices();
        env["SEMIGRATE__Postgres__Schema"] = "doctor_ok";
        env["SEMIGRATE__Trust__OperatorKey"] = Convert.ToBase64String(TestOperator.PublicKey);
        env["SEMIGRATE__Trust__OperatorKeyFile"] = TestOperator.KeyFile;
        var r = await SemigrateProcess.RunAsync(env, "doctor");
        Assert.True(r.ExitCode == 0, $"exit {r.ExitCode}\n{r.Stdout}\n{r.Stderr}");
        Assert.Matches(@"^postgres\s+ok\s+127\.0\.0\.1:\d+, Marten store ready \(schema doctor_ok\)", Line(r.Stdout, "postgres"));
        Assert.Matches(@"^rabbitmq\s+ok\s+127\.0\.0\.1:\d+ \(TLS\), RabbitMQ \d", Line(r.Stdout, "rabbitmq")); // the services speak AMQPS only
        Assert.Matches("^temporal\\s+ok\\s+not configured: the embedded engine will run migrations", Line(r.Stdout, "temporal"));
        Assert.Contains("qemu", r.Stdout, StringComparison.Ordinal);
        Assert.Matches(@"^trust\s+ok\s+host workers here pin operator key [0-9A-F]{16}; the operator's key to sign with is ", Line(r.Stdout, "trust"));
    }

    [Fact]
    public async Task Plain_AMQP_reaches_no_broker_the_services_run()
    {
        var env = await RunningServices();
        var tls = new Uri(env["SEMIGRATE__RabbitMq__Uri"]);
        Assert.Equal("amqps", tls.Scheme);
        env["SEMIGRATE__RabbitMq__Uri"] = new UriBuilder(tls) { Scheme = "amqp" }.Uri.ToString(); // the same port, without TLS
        var r = await SemigrateProcess.RunAsync(env, "doctor");
        Assert.Equal(1, r.ExitCode);
        Assert.Matches(@"^rabbitmq\s+FAILED", Line(r.Stdout, "rabbitmq"));
    }

    [Fact]
    public async Task A_host_without_the_operators_key_is_told_it_refuses_every_step()
    {
        var env = await RunningServices();
        env["SEMIGRATE__Trust__OperatorKey"] = "";
        env["SEMIGRATE__Trust__OperatorKeyFile"] = "/nonexistent/operator.key";
        var r = await SemigrateProcess.RunAsync(env, "doctor");
        Assert.Matches(@"^trust\s+missing\s+Trust:OperatorKey is not set: a host worker here refuses every step .*no operator key at /nonexistent/operator.key",
            Line(r.Stdout, "trust"));
    }

    [Fact]
    public async Task A_stopped_RabbitMQ_is_reported_failed_with_a_nonzero_exit_code()
    {
        var env = await RunningServices();
        env["SEMIGRATE__RabbitMq__Uri"] = $"amqp://guest:guest@127.0.0.1:{SemigrateProcess.ClosedPort()}/";
        var r = await SemigrateProcess.RunAsync(env, "doctor");
        Assert.Equal(1, r.ExitCode);
        Assert.Matches(@"^rabbitmq\s+FAILED\s+.*Connection refused", Line(r.Stdout, "rabbitmq"));
        Assert.Matches(@"^postgres\s+ok", Line(r.Stdout, "postgres"));
    }

    [Fact]
    public async Task A_stopped_PostgreSQL_is_reported_failed_with_a_nonzero_exit_code()
    {
        var env = await RunningServices();
        env["SEMIGRATE__Postgres__ConnectionString"] = $"Host=127.0.0.1;Port={SemigrateProcess.ClosedPort()};Username=postgres";
        var r = await SemigrateProcess.RunAsync(env, "doctor");
        Assert.Equal(1, r.ExitCode);
        Assert.Matches(@"^postgres\s+FAILED\s+.*refused", Line(r.Stdout, "postgres"));
        Assert.Matches(@"^rabbitmq\s+ok", Line(r.Stdout, "rabbitmq"));
    }

    [Fact]
    public async Task The_services_take_passwords_only_and_doctor_names_the_setting_that_lacks_one()
    {
        var env = await RunningServices();
        var (pg, amqp) = (new Npgsql.NpgsqlConnectionStringBuilder(env["SEMIGRATE__Postgres__ConnectionString"]), new Uri(env["SEMIGRATE__RabbitMq__Uri"]));
        Assert.False(string.IsNullOrEmpty(pg.Password), "the services' settings carry PostgreSQL's password");
        Assert.Equal("semigrate", pg.Username); // the application's own role, not the superuser
        Assert.StartsWith("semigrate:", amqp.UserInfo, StringComparison.Ordinal);
        env["SEMIGRATE__Postgres__ConnectionString"] = new Npgsql.NpgsqlConnectionStringBuilder(pg.ConnectionString) { Password = null }.ConnectionString;
        env["SEMIGRATE__RabbitMq__Uri"] = new UriBuilder(amqp) { UserName = "guest", Password = "guest" }.Uri.ToString(); // the broker's old administrator

        var r = await SemigrateProcess.RunAsync(env, "doctor");

        Assert.Equal(1, r.ExitCode);
        Assert.Matches(@"^postgres\s+FAILED\s+Postgres:ConnectionString has no password for semigrate", Line(r.Stdout, "postgres"));
        Assert.Matches(@"^rabbitmq\s+FAILED\s+RabbitMq:Uri logs in as guest, whom the broker refuses", Line(r.Stdout, "rabbitmq"));
    }

    [Fact]
    public async Task A_configured_but_unreachable_Temporal_fails_the_check()
    {
        var env = await RunningServices();
        env["SEMIGRATE__Temporal__Address"] = $"127.0.0.1:{SemigrateProcess.ClosedPort()}";
        var r = await SemigrateProcess.RunAsync(env, "doctor");
        Assert.Equal(1, r.ExitCode);
        Assert.Matches(@"^temporal\s+FAILED\s+.*refused", Line(r.Stdout, "temporal"));
    }

    [Theory]
    [InlineData("SEMIGRATE__Postgres__ConnectionString", "Bogus=1", "postgres", "Postgres:ConnectionString")]
    [InlineData("SEMIGRATE__Postgres__Schema", "Drop Table", "postgres", "Postgres:Schema")]
    [InlineData("SEMIGRATE__RabbitMq__Uri", "http://127.0.0.1/", "rabbitmq", "RabbitMq:Uri")]
    [InlineData("SEMIGRATE__Temporal__Address", "not an address", "temporal", "Temporal:Address")]
    [InlineData("SEMIGRATE__Trust__OperatorKey", "bm90IGEga2V5", "trust", "Trust:OperatorKey")]
    public async Task A_wrong_setting_is_one_clear_line_naming_the_key_not_a_stack_trace(
        string variable, string value, string check, string key)
    {
        var env = await RunningServices();
        env[variable] = value;
        var r = await SemigrateProcess.RunAsync(env, "doctor");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains(key, Line(r.Stdout, check), StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", r.Stdout + r.Stderr, StringComparison.Ordinal);
    }
}
